"""A tiny name -> object registry shared by every pluggable family (algorithms, kernels, compressors, ...)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional


#: bumped on every register/unregister (and by ``auto.set_table``); the trainer's hook cache keys on it
generation = [0]
#: called after every bump (the transports drop their one-shot caches)
on_change: list = []


def changed() -> None:
    """Count a change of what a name or ``auto`` resolves to, and tell the caches."""
    generation[0] += 1
    for fn in on_change:
        fn()


class UnknownNameError(ValueError, KeyError):
    """Raised by :meth:`Registry.get` for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class Registry:
    """Map names to objects for one family, with ``register``/``get`` and an error listing the valid names."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._items: Dict[str, Any] = {}
        self._built: Dict[str, Any] = {}  # what build() made from a registered factory

    def register(self, name: str, obj: Any = None, *, overwrite: bool = False) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator that does it."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.family} name must be a non-empty string, got {name!r}")

        def _add(o: Any) -> Any:
            if name in self._items and not overwrite:
                raise ValueError(f"{self.family} {name!r} is already registered (pass overwrite=True to replace it)")
            self._items[name] = o
            self._built.pop(name, None)
            changed()
            return o

        return _add if obj is None else _add(obj)

    def unregister(self, name: str) -> None:
        self.get(name)
        del self._items[name]
        self._built.pop(name, None)
        changed()

    def build(self, name: str) -> Any:
        """Call the zero-argument factory registered as ``name`` once and return (and keep) what it made.

        For families whose entries must not be built at import (JIT-compiled or GPU kernels).
        """
        if name not in self._built:
            self._built[name] = self.get(name)()
        return self._built[name]

    def built(self, name: str) -> Any:
        """What :meth:`build` made for ``name`` so far, or None."""
        return self._built.get(name)

    def get(self, name: str) -> Any:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(
                f"unknown {self.family} {name!r}; valid names: {', '.join(sorted(self._items)) or '(none registered)'}"
            ) from None

    def names(self) -> list:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def items(self):
        return sorted(self._items.items())


def lazy(factory: Callable[[], Any]) -> Callable[[], Any]:
    """Memoize a zero-argument factory (used for kernels that must not compile at import)."""
    cache: Optional[list] = []

    def get() -> Any:
        if not cache:
            cache.append(factory())
        return cache[0]

    get.__name__ = getattr(factory, "__name__", "lazy")
    return get
