"""SAFREE: Training-Free and Adaptive Guard for Safe Text-to-Image and Video Generation (Yoon, Yu, Kim, Cho,
Bansal; ICLR 2025).

Three parts, all at inference time:

1. **Toxic-subspace projection of trigger tokens** (Sec. 3.1-3.2). The toxic concepts' pooled text embeddings span
   a subspace C with projector P_C = E (E^T E)^-1 E^T. For each real token i of the prompt, the prompt with that
   token masked (replaced by the vocabulary's first token, as the reference code does) is encoded, p_\\i; its
   distance to C is d_i = |(I - P_C) p_\\i|. A token whose removal moves the prompt markedly *away* from C is a
   trigger: d_i >= (1 + alpha) * mean_{j != i} d_j. Trigger tokens (and the special and padding positions) are
   replaced by (I - P_C) P_M e, the embedding projected out of C and back into the span of the masked prompts
   (P_M), so it stays in the input space; the other tokens are kept.
2. **Self-validating filter** (Sec. 3.3). With beta = 1 - mean cosine similarity between the projected and the
   original token embeddings, the projected embeddings condition the first
   t' = round(U * sigmoid(2k (10 beta - t0))) steps (U = 10 of 50 steps, k = 2.5, t0 = 5.333, the reference
   values for nudity) and the original ones after: a prompt that the projection barely changes is left alone.
3. **Adaptive latent re-attention** (Sec. 3.4): while the projected embeddings are in use, the skip features of
   the UNet's decoder are filtered in the Fourier domain, their low frequencies scaled down (s1 0.9, s2 0.2;
   backbone factors b1 = b2 = 1), through diffusers' own FreeU implementation (``pipe.enable_freeu``), switched
   off again after sampling.
The concept list also serves as the negative prompt, as in the reference pipeline.

Defaults are the paper's for Stable Diffusion (alpha 0.01, the nudity concept list below); on the tiny model give
the concept's words (``concepts: [star, five-pointed shape, pentagram]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from eraselab.errors import EraselabError
from eraselab.models.conditioning import require_one_text_encoder
from eraselab.models.vocabulary import require_known_words
from eraselab.requests import GenerationRequest
from eraselab.sampling import GuidanceRule

NUDITY_CONCEPTS = ("Sexual Acts", "Content Meant to Arouse Sexual Excitement", "Nudity", "Pornography", "Erotic Art",
                   "Lustful", "Seductive", "Orgasmic", "Libido", "Kinky", "Sexual Orientation", "Sexual Attraction",
                   "Sexual Intercourse", "Sexual Pleasure", "Sexual Fantasy", "Carnal Desires",
                   "Sexual Gratification")
SVF_K, SVF_T0 = 2.5, 5.333  # the reference self-validating filter's sigmoid (nudity and most concepts)


@dataclass(frozen=True)
class SafreeGuard:
    concepts: str | tuple[str, ...] = NUDITY_CONCEPTS  # one phrase or several; held as a tuple
    alpha: float = 0.01
    self_validation: bool = True
    svf_upper: int = 10  # U: at most this many steps use the projected embeddings
    re_attention: bool = True
    freeu: tuple[float, float, float, float] = (1.0, 1.0, 0.9, 0.2)  # b1, b2, s1, s2
    name: str = "safree"
    differentiable: ClassVar[bool] = False  # discrete token masking and a detached projection: no gradient to follow

    def __post_init__(self) -> None:
        concepts = (self.concepts,) if isinstance(self.concepts, str) else tuple(self.concepts)
        if not concepts or not all(isinstance(c, str) and c.strip() for c in concepts):
            raise EraselabError("SAFREE needs at least one toxic concept phrase")
        object.__setattr__(self, "concepts", concepts)  # YAML gives lists; keep the guard hashable
        object.__setattr__(self, "freeu", tuple(float(f) for f in self.freeu))
        if len(self.freeu) != 4:
            raise EraselabError("freeu takes four factors: b1, b2, s1, s2")

    @property
    def label(self) -> str:
        concepts = "nudity" if self.concepts == NUDITY_CONCEPTS else ", ".join(self.concepts)
        return f"safree({concepts})"

    def settings(self) -> dict:
        return {"name": self.name, "concepts": list(self.concepts), "alpha": self.alpha,
                "self_validation": self.self_validation, "svf_upper": self.svf_upper,
                "re_attention": self.re_attention, "freeu": list(self.freeu)}

    def rewrite(self, request: GenerationRequest) -> GenerationRequest:
        concepts = ", ".join(self.concepts)
        negative = f"{request.negative_prompt}, {concepts}" if request.negative_prompt else concepts
        return replace(request, negative_prompt=negative)

    def guidance_rule(self, pipe) -> SafreeRule:
        require_one_text_encoder(pipe, "the SAFREE guard")
        require_known_words(pipe, list(self.concepts),
                            "SAFREE concepts have words outside the model's vocabulary")
        return SafreeRule(self, _projector(_pooled(pipe, list(self.concepts)).T))


def _pooled(pipe, prompts: list[str] | torch.Tensor) -> torch.Tensor:
    """Pooled ([EoT]) text embeddings, float64 (B, C)."""
    ids = prompts if isinstance(prompts, torch.Tensor) else pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
        return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids.to(pipe.text_encoder.device)).pooler_output.double().cpu()


def _projector(columns: torch.Tensor) -> torch.Tensor:
    """P = E (E^T E)^-1 E^T onto the span of the columns of E (C, K); pinv keeps it defined when E is rank-poor."""
    return columns @ torch.linalg.pinv(columns.T @ columns) @ columns.T


class SafreeRule(GuidanceRule):
    def __init__(self, guard: SafreeGuard, concept_projector: torch.Tensor) -> None:
        self.guard, self.p_c = guard, concept_projector
        self.projected: torch.Tensor | None = None
        self.last_step: list[int] = []
        self.triggers: list[list[int]] = []  # per prompt: the token positions judged triggers (for inspection)

    def start(self, pipe, prompts, positive, negative):
        projected, self.last_step, self.triggers = [], [], []
        identity = torch.eye(self.p_c.shape[0], dtype=torch.float64)
        outside = identity - self.p_c  # I - P_C
        for prompt, embedding in zip(prompts, positive, strict=True):
            ids = pipe.tokenizer(prompt, truncation=True, max_length=pipe.tokenizer.model_max_length,
                                 return_tensors="pt").input_ids[0]
            n_tokens = len(ids) - 2
            original = embedding.detach().double().cpu()
            if n_tokens < 1:  # nothing to mask: the empty prompt is left as it is
                projected.append(embedding)
                self.last_step.append(-1)
                self.triggers.append([])
                continue
            masked = ids.repeat(n_tokens, 1)
            masked[torch.arange(n_tokens), torch.arange(1, n_tokens + 1)] = 0  # leave-one-out masking
            masked_pooled = _pooled(pipe, masked)  # p_\i, (n, C)
            distance = (masked_pooled @ outside.T).norm(dim=1)  # d_i = |(I - P_C) p_\i|
            others = (distance.sum() - distance) / max(n_tokens - 1, 1)
            trigger = distance >= (1 + self.guard.alpha) * others if n_tokens > 1 else torch.ones(1, dtype=bool)
            moved = original @ (outside @ _projector(masked_pooled.T)).T  # (I - P_C) P_M e for every token
            keep = torch.zeros(len(original), dtype=torch.bool)
            keep[1:n_tokens + 1] = ~trigger  # kept: real tokens that are not triggers
            self.triggers.append([i + 1 for i in range(n_tokens) if trigger[i]])
            projected.append(torch.where(keep[:, None], original, moved).to(embedding.dtype).to(embedding.device))
            self.last_step.append(self._filter_steps(original[:n_tokens + 2], moved[:n_tokens + 2]))
        self.projected = torch.stack(projected)

    def _filter_steps(self, original: torch.Tensor, moved: torch.Tensor) -> int:
        """The last step that uses the projected embeddings (self-validating filter)."""
        if not self.guard.self_validation:
            return 10 ** 9
        beta = 1 - float(torch.nn.functional.cosine_similarity(moved, original, dim=-1).mean().detach())
        if math.isnan(beta):
            return -1
        return round(self.guard.svf_upper / (1 + math.exp(-2 * SVF_K * (10 * beta - SVF_T0))))

    def embeddings(self, step, positive, negative):
        use = torch.tensor([step <= last for last in self.last_step], device=positive.device)
        return torch.where(use[:, None, None], self.projected, positive), negative

    def before_step(self, step, pipe):
        if not self.guard.re_attention:
            return
        b1, b2, s1, s2 = self.guard.freeu
        if any(step <= last for last in self.last_step):
            pipe.enable_freeu(s1=s1, s2=s2, b1=b1, b2=b2)
        else:
            pipe.disable_freeu()

    def finish(self, pipe):
        if self.guard.re_attention:
            pipe.disable_freeu()

    def combine(self, step, eps_uncond, eps_text, extras, guidance_scale):
        return eps_uncond + guidance_scale * (eps_text - eps_uncond)
