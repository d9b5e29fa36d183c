"""Compositional guidance (Liu et al., "Compositional Visual Generation with Composable Diffusion Models", ECCV
2022), the sampler that Concept Arithmetics (Petsiuk & Saenko, ECCV 2024) turns against erased models:
    eps = eps(neg) + s (eps(prompt) - eps(neg)) + sum_i w_i (eps(c_i) - eps(neg))          (Eq. 2 of CA)
Each extra term (c_i, w_i) is one more prompt the UNet is run on every step; a negative weight subtracts a
concept. It is replayed like a guard (:mod:`eraselab.guard`), so any edited model can be sampled with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from eraselab.errors import EraselabError
from eraselab.models.conditioning import UNetCondition, guidance_conditions
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
        require_known_words(pipe, [p for p, _ in self.terms],
                            "composition terms have words outside the model's vocabulary")
        terms = guidance_conditions(pipe, [p for p, _ in self.terms])[0]  # on SDXL with their pooled text (the
        return CompositionRule(terms, [w for _, w in self.terms])  # sampler sets the time ids of the image's size)


class CompositionRule(GuidanceRule):
    def __init__(self, terms: UNetCondition, weights: list[float]) -> None:
        self.terms, self.weights = terms, weights

    def extra_embeddings(self, batch_size: int) -> list[UNetCondition]:
        return [self.terms.rows(slice(i, i + 1)).expand(batch_size) for i in range(len(self.terms))]

    def combine(self, step, eps_uncond, eps_text, extras, guidance_scale):
        eps = eps_uncond + guidance_scale * (eps_text - eps_uncond)
        for weight, eps_term in zip(self.weights, extras, strict=True):
            eps = eps + weight * (eps_term - eps_uncond)  # Eq. 2 of Concept Arithmetics
        return eps
