"""What eraselab assumes about a family of models, in one place: the sampler's defaults, the judge an attack is
scored by when none is named, and whether methods take their tiny-world settings.

Two profiles: the tiny world (``--model tiny``) and Stable Diffusion (any other model: SD 1.x, 2.x, XL). The
sampler defaults are the papers' for SD 1.x (50 steps, guidance 7.5) and the ones the tiny model was trained and
measured with (25 steps, guidance 5.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelProfile:
    name: str
    steps: int  # sampler steps when none are given
    guidance: float  # classifier-free guidance scale when none is given
    judge: str  # the detector an attack is scored by when none is named
    tiny: bool  # methods and attacks take their ``tiny_overrides``; erase templates come from the tiny world

    def config(self, config_class: type, **overrides):
        """``config_class``'s defaults: the paper's, with its ``tiny_overrides`` on the tiny model, then
        ``overrides`` (already checked: :func:`eraselab.options.build_config` checks a user's)."""
        base = dict(getattr(config_class, "tiny_overrides", {})) if self.tiny else {}
        return config_class(**{**base, **overrides})

    def erase_templates(self, concept: str) -> tuple[str, ...] | None:
        """The prompt forms an erasure expands ``concept`` with when the user gives none: the tiny world's forms
        (both word orders, crossed with the other attributes); None elsewhere (the bare concept)."""
        if not self.tiny:
            return None
        from eraselab.models.tiny.world import load_world

        return load_world().erase_templates(concept)

    def oracle_label(self, concept: str) -> str | None:
        """What an attack's oracle looks for when the user names none: the tiny class ``concept`` names
        ("pentagram" -> "shape=star"); None elsewhere (the user must say)."""
        if not self.tiny:
            return None
        from eraselab.models.tiny.suites import concept_label

        return concept_label(concept)


TINY = ModelProfile("tiny", steps=25, guidance=5.0, judge="tiny", tiny=True)
STABLE_DIFFUSION = ModelProfile("stable-diffusion", steps=50, guidance=7.5, judge="nudenet", tiny=False)


def profile_for(model: str | Path) -> ModelProfile:
    """The profile of a model named as the CLI and experiments name it (``tiny``, a directory or a hub id)."""
    return TINY if str(model) == "tiny" else STABLE_DIFFUSION


def profile_of(pipe) -> ModelProfile:
    """The profile of a loaded pipeline: a tiny-world model (the shipped one, or one ``eraselab tiny train`` made)
    has the tiny world's closed vocabulary."""
    from eraselab.models.vocabulary import closed_vocabulary

    return TINY if closed_vocabulary(pipe) else STABLE_DIFFUSION
