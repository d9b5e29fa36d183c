"""Compositional guidance (Liu et al., "Compositional Visual Generation with Composable Diffusion Models", ECCV
2022), the sampler that Concept Arithmetics (Petsiuk & Saenko, ECCV 2024) turns against erased models:
    eps = eps(neg) + s (eps(prompt) - eps(neg)) + sum_i w_i (eps(c_i) - eps(neg))          (Eq. 2 of CA)
Each extra term (c_i, w_i) is one more prompt the UNet is run on every step; a negative weight subtracts a
concept. It is replayed like a guard (:mod:`eraselab.guard`), so any edited model can be sampled with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eraselab.errors import EraselabError
from eraselab.models.conditioning import require_one_text_encoder
from eraselab.models.vocabulary import require_known_words
from eraselab.requests import GenerationRequest
from eraselab.sampling import GuidanceRule


@dataclass(frozen=True)
class CompositionGuard:
    terms: tuple[tuple[str, float], ...]
    name: str = "composition"

    def __post_init__(self) -> None:
        if not self.terms:
            raise EraselabError("a composition needs at least one (prompt, weight) term")

    @property
    def label(self) -> str:
        return "compose(" + ", ".join(f"{w:+g}*{p!r}" for p, w in self.terms) + ")"

    def settings(self) -> dict:
        return {"name": self.name, "terms": [[p, w] for p, w in self.terms]}

    def rewrite(self, request: GenerationRequest) -> GenerationRequest:
        return request

    def guidance_rule(self, pipe) -> CompositionRule:
        require_one_text_encoder(pipe, "a composition recipe")
        require_known_words(pipe, [p for p, _ in self.terms],
                            "composition terms have words outside the model's vocabulary")
        with torch.no_grad():
            embeddings, _ = pipe.encode_prompt([p for p, _ in self.terms], pipe.device, 1, False)
        return CompositionRule(embeddings, [w for _, w in self.terms])


class CompositionRule(GuidanceRule):
    def __init__(self, embeddings: torch.Tensor, weights: list[float]) -> None:
        self.term_embeddings, self.weights = embeddings, weights

    def extra_embeddings(self, batch_size: int) -> list[torch.Tensor]:
        return [e[None].expand(batch_size, -1, -1) for e in self.term_embeddings]

    def combine(self, step, eps_uncond, eps_text, extras, guidance_scale):
        eps = eps_uncond + guidance_scale * (eps_text - eps_uncond)
        for weight, eps_term in zip(self.weights, extras, strict=True):
            eps = eps + weight * (eps_term - eps_uncond)  # Eq. 2 of Concept Arithmetics
        return eps
