"""The erasure methods, by short name: ``ERASERS.get("uce")`` gives a :class:`MethodEntry`; a method's config
from a user's options is :func:`eraselab.options.build` (``build(ERASERS, "uce", {...}, profile)``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from eraselab.registry import Registry


@dataclass(frozen=True)
class MethodEntry:
    """An erasure method: ``erase(pipe, spec, config) -> Edit`` and its config dataclass (the paper's defaults,
    with ``tiny_overrides`` for the tiny model)."""

    erase: Callable
    config: type


ERASERS: Registry[MethodEntry] = Registry("erasure method")
ERASERS.register_lazy("uce", "eraselab.erase.uce:METHOD")
ERASERS.register_lazy("rece", "eraselab.erase.rece:METHOD")
ERASERS.register_lazy("trce", "eraselab.erase.trce:METHOD")
ERASERS.register_lazy("advunlearn", "eraselab.erase.advunlearn:METHOD")
ERASERS.register_lazy("esd", "eraselab.erase.esd:METHOD")
ERASERS.register_lazy("safegen", "eraselab.erase.safegen:METHOD")
