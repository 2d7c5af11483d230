"""Memory (error feedback): ``none`` and ``residual``, one instance per bucket.

``residual`` adds last step's compression error to this step's input and keeps the new error
(``e <- x + e - C(x + e)``), which turns biased compressors such as sign and top-k into ones that converge like
SGD (Seide et al. 2014; Karimireddy et al. 2019, EF-signSGD; Stich et al. 2018, top-k with memory).
"""
from __future__ import annotations

import numpy as np

from .._registry import Registry

registry = Registry("memory")


@registry.register("none")
class NoMemory:
    """Forget the compression error."""

    __slots__ = ()

    def compensate(self, x: np.ndarray) -> np.ndarray:
        return x

    def update(self, compensated: np.ndarray, estimate: np.ndarray) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@registry.register("residual")
class Residual:
    """Carry the compression error ``compensated - estimate`` into the next step."""

    __slots__ = ("residual",)

    def __init__(self):
        self.residual = None

    def compensate(self, x: np.ndarray) -> np.ndarray:
        if self.residual is None or self.residual.shape != x.shape:
            return np.array(x, dtype=np.float32, copy=True)
        return x + self.residual

    def update(self, compensated: np.ndarray, estimate: np.ndarray) -> None:
        self.residual = np.subtract(compensated, estimate, dtype=np.float32)

    def state_dict(self) -> dict:
        return {} if self.residual is None else {"residual": self.residual}

    def load_state_dict(self, state: dict) -> None:
        self.residual = np.array(state["residual"], np.float32) if "residual" in state else None
