"""PyTorch front end (extra ``torch``): tensor allreduce and plans, a Horovod-style DistributedOptimizer, broadcasts.

``import ring_allreduce.torch as rat`` needs torch; nothing else in the package imports it. The subpackage is named
after the framework it serves; every module in it imports the framework with the absolute ``import torch`` (the
only kind of import Python 3 has for a bare name), so this name shadows nothing.

::

    opt = rat.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model.named_parameters())
    rat.broadcast_parameters(model.state_dict(), root=0)
    rat.broadcast_optimizer_state(opt, root=0)
    for x, y in loader:                      # this rank's share of the global batch
        opt.zero_grad()
        loss_fn(model(x), y).backward()      # buckets start reducing while backward runs
        opt.step()                           # waits for them, then steps the wrapped optimizer
"""
try:
    import torch as _torch  # noqa: F401 - the framework, not this package (absolute import)
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("ring_allreduce.torch needs PyTorch: pip install 'ring-allreduce[torch]'") from e

from .broadcast import broadcast_optimizer_state, broadcast_parameters
from .optimizer import DistributedOptimizer
from .tensors import TensorPlan, allreduce, allreduce_init, iallreduce

__all__ = ["allreduce", "allreduce_init", "iallreduce", "TensorPlan", "DistributedOptimizer",
           "broadcast_parameters", "broadcast_optimizer_state"]
