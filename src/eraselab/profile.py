"""What eraselab assumes about a family of models, in one place: the sampler's defaults, the judge an attack is
scored by when none is named, and whether methods take their tiny-world settings.

Three profiles: the tiny world (``--model tiny``), Stable Diffusion (SD 1.x, 2.x, a hub id) and SDXL (a local
directory whose ``model_index.json`` names an SDXL pipeline). The sampler defaults are the papers' for SD 1.x (50
steps, guidance 7.5; SDXL keeps them) and the ones the tiny model was trained and measured with (25 steps, guidance
5.0). On SDXL a method takes its ``sdxl_overrides`` where its authors' SDXL script differs from their SD one (ESD).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelProfile:
    name: str
    steps: int  # sampler steps when none are given
    guidance: float  # classifier-free guidance scale when none is given
    judge: str  # the detector an attack is scored by when none is named
    tiny: bool  # methods and attacks take their ``tiny_overrides``; erase templates come from the tiny world
    xl: bool = False  # methods take their ``sdxl_overrides``

    def config(self, config_class: type, **overrides):
        """``config_class``'s defaults: the paper's, with its ``tiny_overrides`` on the tiny model (its
        ``sdxl_overrides`` on SDXL), then ``overrides`` (already checked: :func:`eraselab.options.build_config`
        checks a user's)."""
        kind = "tiny_overrides" if self.tiny else "sdxl_overrides" if self.xl else None
        base = dict(getattr(config_class, kind, {})) if kind else {}
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
SDXL = ModelProfile("stable-diffusion-xl", steps=50, guidance=7.5, judge="nudenet", tiny=False, xl=True)


def profile_for(model: str | Path) -> ModelProfile:
    """The profile of a model named as the CLI and experiments name it (``tiny``, a directory or a hub id; a hub
    id's layout is not known before it downloads, so it takes Stable Diffusion's)."""
    if str(model) == "tiny":
        return TINY
    index = Path(model) / "model_index.json"
    if index.is_file() and "XL" in str(json.loads(index.read_text()).get("_class_name", "")):
        return SDXL
    return STABLE_DIFFUSION


def profile_of(pipe) -> ModelProfile:
    """The profile of a loaded pipeline: a tiny-world model (the shipped one, or one ``eraselab tiny train`` made)
    has the tiny world's closed vocabulary; SDXL has a second text encoder."""
    from eraselab.models.conditioning import is_sdxl
    from eraselab.models.vocabulary import closed_vocabulary

    return TINY if closed_vocabulary(pipe) else SDXL if is_sdxl(pipe) else STABLE_DIFFUSION
