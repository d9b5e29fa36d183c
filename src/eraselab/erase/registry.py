"""The erasure methods, by short name: ``ERASERS.get("uce")`` gives ``(erase function, config class)``."""

from __future__ import annotations

from eraselab.registry import Registry

ERASERS: Registry[object] = Registry("erasure method")
ERASERS.register_lazy("uce", "eraselab.erase.uce:METHOD")
