"""What to generate: one request, one seed, one image. The type every layer shares (generation, guards, attacks,
the experiment runner), so it sits below all of them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from eraselab.profile import TINY


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. ``prompt_embeds`` (1, T, C), when given, replaces the prompt's text encoding
    (attacks that optimise embeddings replay them this way); ``prompt`` then only labels the request (on SDXL its
    pooled text stays, unless ``pooled_embeds`` (1, P) replaces it too)."""

    prompt: str
    seed: int
    steps: int = TINY.steps
    guidance: float = TINY.guidance
    height: int | None = None
    width: int | None = None
    negative_prompt: str = ""
    prompt_embeds: torch.Tensor | None = field(default=None, compare=False, repr=False)
    pooled_embeds: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def settings(self) -> tuple:
        """The sampler settings a batch must share."""
        return (self.steps, self.guidance, self.height, self.width)

    def to_record(self) -> dict:
        record = asdict(self)
        record.pop("prompt_embeds")
        record.pop("pooled_embeds")
        record["has_prompt_embeds"] = self.prompt_embeds is not None
        return record
