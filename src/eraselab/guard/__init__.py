"""Inference-time guards: defences that change how a model is sampled, not its weights.

A guard rewrites each :class:`~eraselab.generate.GenerationRequest` (the negative prompt) and/or supplies a
guidance rule for every denoising step (:mod:`eraselab.sampling`); nothing is left changed after generation.
``make_guard("sld", concept="star", preset="strong")`` builds one by name; ``Guard.label`` names it in runs and
reports as an edit's directory name does.
"""

from __future__ import annotations

from typing import Protocol

from eraselab.registry import Registry
from eraselab.requests import GenerationRequest
from eraselab.sampling import GuidanceRule


class Guard(Protocol):
    name: str
    differentiable: bool  # whether gradient attacks can put it into their loss (:mod:`eraselab.attack.defended_noise`)

    @property
    def label(self) -> str: ...

    def settings(self) -> dict: ...

    def rewrite(self, request: GenerationRequest) -> GenerationRequest: ...

    def guidance_rule(self, pipe) -> GuidanceRule | None: ...


GUARDS: Registry[type] = Registry("guard")
GUARDS.register_lazy("negative-prompt", "eraselab.guard.negative_prompt:NegativePromptGuard")
GUARDS.register_lazy("sld", "eraselab.guard.sld:SldGuard")
GUARDS.register_lazy("safree", "eraselab.guard.safree:SafreeGuard")


def make_guard(name: str, **options) -> Guard:
    """The guard ``name`` with ``options`` (its dataclass fields), checked (:func:`eraselab.options.make`)."""
    from eraselab.options import make

    return make(GUARDS, name, options)
