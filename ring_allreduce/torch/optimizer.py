"""``DistributedOptimizer``: wrap a torch optimizer so that ``step()`` applies the gradient reduced across ranks.

Gradients are reported by per-parameter post-accumulate-grad hooks as backward produces them, copied into
buckets (:class:`ring_allreduce.optim.GradientBuckets`), and each bucket's persistent plan starts as soon as the
bucket is full, so communication overlaps the rest of backward. ``step()`` waits for the buckets, writes the
reduced gradients back into ``p.grad`` and steps the wrapped optimizer. The contract follows Horovod's:
``synchronize()`` then ``with opt.skip_synchronize(): opt.step()`` for gradient clipping; ``zero_grad()`` between
``backward()`` and ``step()`` is an error; with ``backward_passes_per_step = k`` the gradients of k backward passes
accumulate locally (summed, as torch does) and are reduced once, on the k-th pass.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..errors import ArgumentError
from ..optim.core import DEFAULT_BUCKET_MB, GradientBuckets, check_backward_passes


def _np_dtype(t: torch.Tensor):
    return torch.empty((), dtype=t.dtype).numpy().dtype


class DistributedOptimizer(torch.optim.Optimizer):
    """Data-parallel wrapper of ``optimizer`` over ``comm`` (collective to construct).

    Args:
        optimizer: any ``torch.optim.Optimizer``; its ``param_groups`` and ``state`` are shared, not copied.
        named_parameters: ``model.named_parameters()`` (names make mismatch errors readable); default: names
            ``group{g}.{k}`` from the optimizer's groups. Must cover every parameter of the optimizer.
        op: ``"avg"`` (default; the gradient of the global batch when every rank's loss is its local mean) or
            ``"sum"``.
        algorithm: allreduce algorithm name or ``"auto"``.
        bucket_mb: bucket size in MiB (buckets follow the reverse parameter order, which is backward's).
        compression: a compressor name (``fp16``, ``int8``, ``topk``, ``powersgd``, ...) with error feedback on for
            lossy ones; ``compression_options`` go to :class:`~ring_allreduce.compression.CompressionState`.
            Compressed buckets are reduced when full, blocking.
        backward_passes_per_step: backward passes accumulated locally before one reduction.
        backup_workers: must be 0 (backup workers need the trainer's step coordinator).

    The layout (names, shapes, dtypes, order) and the settings are agreed at construction: a mismatch raises the
    same :class:`~ring_allreduce.MismatchError` on every rank.
    """

    def __init__(self, optimizer, named_parameters=None, *, comm=None, op="avg", algorithm="auto",
                 bucket_mb: float = DEFAULT_BUCKET_MB, compression=None, compression_options=None,
                 backward_passes_per_step: int = 1, backup_workers: int = 0):
        # no super().__init__: param_groups, state and defaults are the wrapped optimizer's own objects
        self.optimizer = optimizer
        problems = []  # reported through the core's agreement, so every rank raises the same error
        if backup_workers:
            problems.append("DistributedOptimizer does not support backup workers (they need the trainer's step "
                            "coordinator: use `ring-allreduce train --backup-workers`)")
        try:
            self.backward_passes_per_step = check_backward_passes(backward_passes_per_step)
        except ArgumentError as e:
            problems.append(str(e))
            self.backward_passes_per_step = 1
        params = [p for g in optimizer.param_groups for p in g["params"]]
        names = [f"group{g}.{k}" for g, grp in enumerate(optimizer.param_groups) for k in range(len(grp["params"]))]
        if named_parameters is not None:
            by_id = {id(p): n for n, p in named_parameters}
            missing = [i for i, p in enumerate(params) if id(p) not in by_id]
            if missing:
                problems.append(f"named_parameters does not cover {len(missing)} of the optimizer's parameters "
                                f"(first: {names[missing[0]]})")
            names = [by_id.get(id(p), n) for p, n in zip(params, names)]
        order = [i for i in reversed(range(len(params))) if params[i].requires_grad]  # backward's usual order
        self._params = [params[i] for i in order]
        specs = []
        for i in order:
            try:
                dt = _np_dtype(params[i])
            except TypeError:  # bfloat16, complex32, ...: no NumPy twin
                problems.append(f"parameter {names[i]} has dtype {params[i].dtype}, which has no NumPy dtype")
                dt = "V2"
            specs.append((names[i], tuple(params[i].shape), dt))
        self.core = GradientBuckets(specs, comm, op=op, algorithm=algorithm, bucket_mb=bucket_mb,
                                    compression=compression, compression_options=compression_options,
                                    settings={"backward_passes_per_step": backward_passes_per_step,
                                              "backup_workers": backup_workers}, problems=problems)
        self._passes = [0] * len(self._params)
        self._synchronized = False
        self._skip_sync = False
        self._hooks = [p.register_post_accumulate_grad_hook(self._hook(i)) for i, p in enumerate(self._params)]

    # the wrapped optimizer's state, shared
    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    @property
    def defaults(self):
        return self.optimizer.defaults

    def _hook(self, i):
        def hook(p):
            self._passes[i] += 1
            if self._passes[i] == self.backward_passes_per_step:
                g = p.grad
                if g.device.type != "cpu":
                    g = g.detach().to("cpu")
                self.core.grad_ready(i, g.detach().numpy() if g.is_contiguous() else g.detach().contiguous().numpy())
            else:
                self.core.progress()
        return hook

    def synchronize(self) -> None:
        """Wait for every bucket and write the reduced gradients into ``p.grad`` (collective)."""
        self.core.wait()
        for i, p in enumerate(self._params):
            red = torch.from_numpy(self.core.grad(i))
            if p.grad is None:
                p.grad = red.to(p.device, copy=True)
            else:
                with torch.no_grad():
                    p.grad.copy_(red)
        self._passes = [0] * len(self._params)
        self._synchronized = True

    @contextmanager
    def skip_synchronize(self):
        """Inside this block ``step()`` does not synchronize (call ``synchronize()`` before it yourself)."""
        self._skip_sync = True
        try:
            yield
        finally:
            self._skip_sync = False

    def step(self, closure=None):
        """Wait for the reduced gradients (unless already synchronized), then step the wrapped optimizer."""
        if self._skip_sync:
            if not self._synchronized:
                raise RuntimeError("step() inside skip_synchronize() needs synchronize() first")
        elif not self._synchronized:
            self.synchronize()
        self._synchronized = False
        return self.optimizer.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (an error between ``backward()`` and ``step()``/``synchronize()``)."""
        if self.core.pending:
            raise RuntimeError("zero_grad() was called after backward() but before step() or synchronize(): "
                               "the gradients being reduced would be lost")
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        """The wrapped optimizer's state dict (the same on every rank; save it from rank 0)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    def compression_state_dict(self) -> dict:
        """Collective: every rank's compression state (error-feedback memory, generators, PowerSGD's Q) as one
        ``{str: ndarray}`` for rank 0 to save (``np.savez``; loads without pickle); ``{}`` without compression."""
        state = self.core.compression
        return {} if state is None else state.gather_state_dict()

    def load_compression_state_dict(self, d: dict) -> None:
        """Restore :meth:`compression_state_dict` (each rank takes its own part when p is unchanged)."""
        if self.core.compression is not None and d:
            self.core.compression.load_state_dict(d)

    def add_param_group(self, param_group) -> None:
        raise ArgumentError("DistributedOptimizer: add parameter groups to the wrapped optimizer before wrapping it "
                            "(the bucket layout is agreed across ranks at construction)")

    def free(self) -> None:
        """Remove the hooks and release the buckets' plans."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.core.free()

    def __repr__(self) -> str:
        return f"DistributedOptimizer({self.optimizer!r}, buckets={len(self.core.buckets)})"

    def __getstate__(self):
        raise TypeError("DistributedOptimizer cannot be pickled; save optimizer.state_dict() instead")


__all__ = ["DistributedOptimizer"]
