"""A small typed registry: decorator registration, lazy ``"module:attr"`` targets, "did you mean" errors.

Later parts register methods, attacks, detectors and metrics here; a lazy target costs nothing (no heavy
import) until it is looked up.

>>> methods: Registry[object] = Registry("methods")
>>> @methods.register("uce")
... def uce(): return "edited"
>>> methods.register_lazy("rece", "eraselab.registry:Registry")
>>> methods.names()
['rece', 'uce']
>>> methods.get("uce")()
'edited'
>>> methods.get("uec")
Traceback (most recent call last):
...
eraselab.errors.EraselabError: unknown methods 'uec'; did you mean 'uce'? (known: rece, uce)
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from eraselab.errors import EraselabError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@registry.register("uce")``."""

        def decorate(obj: T) -> T:
            self._add(name, obj)
            return obj

        return decorate

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"package.module:attribute"``, imported on first :meth:`get`."""
        if ":" not in target:
            raise ValueError(f"lazy target {target!r} must look like 'package.module:attribute'")
        self._add(name, target)

    def _add(self, name: str, entry: T | str) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise EraselabError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, attribute = entry.split(":")
            entry = getattr(importlib.import_module(module), attribute)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
