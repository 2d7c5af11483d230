"""Data sets (digits bundled with scikit-learn, seeded synthetic ones), the global batch order, and sharding.

The order of samples is a pure function of ``(seed, epoch)`` and each global batch is split into ``p`` contiguous
shards (sizes differ by at most one, some possibly empty), so every p sees the same global batches: that is what
makes a p-rank run equal a 1-rank run. A rank only materialises the rows of its own shard (synthetic data are
generated block by block on demand).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from ..schedules import chunk_bounds


class ArrayDataset:
    """In-memory rows; ``take(idx)`` returns ``(X[idx], y[idx])``."""

    def __init__(self, X: np.ndarray, y: np.ndarray):
        self.X, self.y = X, y

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def take(self, idx) -> Tuple[np.ndarray, np.ndarray]:
        return self.X[idx], self.y[idx]


class Task:
    """A train/test pair plus what the model needs to know: input width, output width, loss kind."""

    def __init__(self, name, train, test, n_in, n_out, kind):
        self.name, self.train, self.test = name, train, test
        self.n_in, self.n_out, self.kind = n_in, n_out, kind  # kind: "classification" or "regression"


def digits(split_seed: int = 0, test_fraction: float = 0.2, dtype=np.float32) -> Task:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), standardised, split with a fixed seed.

    The split does not follow the training ``--seed``, so every run is scored on the same test images.
    """
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng([split_seed, 0xD161])
    perm = rng.permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    te, tr = perm[:n_test], perm[n_test:]
    mean, std = X[tr].mean(axis=0), X[tr].std(axis=0)
    std[std == 0] = 1.0  # constant border pixels
    Xs = ((X - mean) / std).astype(dtype)
    y = y.astype(np.int64)
    return Task("digits", ArrayDataset(Xs[tr], y[tr]), ArrayDataset(Xs[te], y[te]), 64, 10, "classification")


class SyntheticDataset:
    """Rows generated in seeded blocks on demand: row ``i`` is the same whoever asks for it.

    Classification: ``x ~ N(0, I)``, label = arg-max of a fixed random linear teacher plus noise.
    Regression: ``y = x . w + noise``.
    """

    BLOCK = 1024

    def __init__(self, n: int, n_in: int, n_out: int, kind: str, seed: int, split: int, dtype=np.float32):
        self.n, self.n_in, self.n_out, self.kind = int(n), int(n_in), int(n_out), kind
        self.seed, self.split, self.dtype = seed, split, np.dtype(dtype)
        teacher = np.random.default_rng([seed, 0x7EAC])
        self.w = teacher.standard_normal((self.n_in, self.n_out)) / np.sqrt(self.n_in)
        self._all: Optional[Tuple[np.ndarray, np.ndarray]] = None

    def __len__(self) -> int:
        return self.n

    def _block(self, b: int):
        """Block ``b``'s rows, generated from its own seed (the same rows whoever asks, in any order)."""
        rng = np.random.default_rng([self.seed, self.split, b])
        rows = min(self.BLOCK, self.n - b * self.BLOCK)
        X = rng.standard_normal((rows, self.n_in))
        t = X @ self.w + 0.1 * rng.standard_normal((rows, self.n_out))
        y = t.argmax(axis=1).astype(np.int64) if self.kind == "classification" else t.astype(self.dtype)
        return X.astype(self.dtype), y

    def _materialize(self):
        """Every row, generated block by block into one array on first use (a shuffled batch touches every
        block, so all of them are needed anyway; one gather per batch then replaces a loop over blocks)."""
        X = np.empty((self.n, self.n_in), dtype=self.dtype)
        y = np.empty((self.n,) if self.kind == "classification" else (self.n, self.n_out),
                     dtype=np.int64 if self.kind == "classification" else self.dtype)
        for b in range(-(-self.n // self.BLOCK)):
            X[b * self.BLOCK:(b + 1) * self.BLOCK], y[b * self.BLOCK:(b + 1) * self.BLOCK] = self._block(b)
        self._all = (X, y)
        return self._all

    def take(self, idx) -> Tuple[np.ndarray, np.ndarray]:
        X, y = self._all if self._all is not None else self._materialize()
        idx = np.asarray(idx, dtype=np.int64)
        return X[idx], y[idx]


def synthetic(kind: str = "classification", n_train: int = 8192, n_test: int = 2048, n_in: int = 256,
              n_out: int = 10, seed: int = 0, dtype=np.float32) -> Task:
    """A seeded synthetic task of any size (``kind``: ``"classification"`` or ``"regression"``)."""
    if kind not in ("classification", "regression"):
        raise ValueError(f"kind must be 'classification' or 'regression', got {kind!r}")
    if kind == "regression" and n_out < 1:
        raise ValueError("regression needs n_out >= 1")
    train = SyntheticDataset(n_train, n_in, n_out, kind, seed, 0, dtype)
    test = SyntheticDataset(n_test, n_in, n_out, kind, seed, 1, dtype)
    return Task(f"synthetic-{kind}", train, test, n_in, n_out, kind)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The global sample order of ``epoch``: a permutation that depends only on ``(seed, epoch)``."""
    return np.random.default_rng([seed, 0x0DE2, epoch]).permutation(n)


def batches(order: np.ndarray, batch_size: int) -> List[np.ndarray]:
    """Split an epoch's order into global batches (the last one may be smaller; none is empty)."""
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def shard(global_batch: np.ndarray, rank: int, size: int) -> np.ndarray:
    """This rank's contiguous share of a global batch (may be empty when the batch has fewer rows than ranks)."""
    b = chunk_bounds(len(global_batch), size)
    return global_batch[b[rank]:b[rank + 1]]
