"""The erasure methods, by short name: ``ERASERS.get("uce")`` gives ``(erase function, config class)``;
``default_config(cls, tiny=True)`` gives a method's defaults for the tiny model (the paper's otherwise)."""

from __future__ import annotations

from eraselab.registry import Registry

ERASERS: Registry[object] = Registry("erasure method")
ERASERS.register_lazy("uce", "eraselab.erase.uce:METHOD")
ERASERS.register_lazy("rece", "eraselab.erase.rece:METHOD")
ERASERS.register_lazy("trce", "eraselab.erase.trce:METHOD")
ERASERS.register_lazy("esd", "eraselab.erase.esd:METHOD")


def default_config(config_class: type, tiny: bool, **overrides):
    """``config_class``'s defaults: the paper's, with its ``tiny_overrides`` on the tiny model, then ``overrides``."""
    base = dict(getattr(config_class, "tiny_overrides", {})) if tiny else {}
    return config_class(**{**base, **overrides})


def tiny_templates(config_class: type, concept: str) -> tuple[str, ...]:
    """The prompt forms to expand ``concept`` with on the tiny model for this method (the world's erase templates;
    crossed with the other attribute unless the method's config says ``tiny_crossed_templates = False``)."""
    from eraselab.models.tiny.world import load_world

    return load_world().erase_templates(concept, getattr(config_class, "tiny_crossed_templates", True))
