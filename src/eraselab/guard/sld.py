"""SLD: Safe Latent Diffusion (Schramowski, Brack, Deiseroth, Kersting; CVPR 2023).

Each step, besides the unconditional and prompt predictions, the UNet predicts the noise for the safety concept
S, and the guidance is pushed away from it (the paper's Eq. 3-8, as in its reference implementation, which
diffusers ships as ``StableDiffusionPipelineSafe``):
    scale  = min(1, |eps(p) - eps(S)| * s_S)                                       (Eq. 6)
    mu     = where(eps(p) - eps(S) >= lambda, 0, scale)                            (Eq. 6)
    gamma  = mu * (eps(S) - eps(0)) + s_m * nu                                     (Eq. 4, 7)
    nu     <- beta_m * nu + (1 - beta_m) * gamma                                   (Eq. 8)
    eps    = eps(0) + s_g * (eps(p) - eps(0) - [step >= warmup] * gamma)           (Eq. 3)
with the paper's four presets (weak, medium, strong, max). We implement the combination rule here rather than
call ``StableDiffusionPipelineSafe``: that pipeline is deprecated in diffusers and takes only prompt strings, so
it could not replay an attack's prompt embeddings or share eraselab's per-request seeding.

Presets are the paper's for 50 steps of Stable Diffusion; the warm-up counts steps, so on the tiny model's 25
steps a preset starts (in relative terms) twice as late. The default safety concept for real models is the
paper's I2P concept list (:data:`I2P_CONCEPT`); on the tiny model it is the erased concept ("star"). On SDXL the
safety concept's prediction is conditioned as the prompt's is (its pooled text, the image's time ids).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from eraselab.errors import EraselabError
from eraselab.models.conditioning import UNetCondition, guidance_conditions
from eraselab.models.vocabulary import require_known_words
from eraselab.requests import GenerationRequest
from eraselab.sampling import GuidanceRule

I2P_CONCEPT = ("hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, bodily fluids, "
               "blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child abuse, "
               "brutality, cruelty")

PRESETS = {  # the paper's Table 1 (s_S, lambda, s_m, beta_m, warm-up)
    "weak": {"warmup_steps": 15, "guidance_scale": 20.0, "threshold": 0.0, "momentum_scale": 0.0, "mom_beta": 0.0},
    "medium": {"warmup_steps": 10, "guidance_scale": 1000.0, "threshold": 0.01, "momentum_scale": 0.3,
               "mom_beta": 0.4},
    "strong": {"warmup_steps": 7, "guidance_scale": 2000.0, "threshold": 0.025, "momentum_scale": 0.5,
               "mom_beta": 0.7},
    "max": {"warmup_steps": 0, "guidance_scale": 5000.0, "threshold": 1.0, "momentum_scale": 0.5, "mom_beta": 0.7},
}


@dataclass(frozen=True)
class SldGuard:
    concept: str = I2P_CONCEPT
    preset: str = "medium"
    name: str = "sld"
    differentiable: ClassVar[bool] = True  # its guidance rule enters the loss of gradient attacks

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise EraselabError(f"SLD preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")

    @property
    def label(self) -> str:
        concept = "i2p" if self.concept == I2P_CONCEPT else self.concept
        return f"sld-{self.preset}({concept})"

    def settings(self) -> dict:
        return {**asdict(self), **PRESETS[self.preset]}

    def rewrite(self, request: GenerationRequest) -> GenerationRequest:
        return request

    def guidance_rule(self, pipe) -> SldRule:
        require_known_words(pipe, [self.concept],
                            "SLD safety concept has words outside the model's vocabulary")
        concept = guidance_conditions(pipe, [self.concept])[0]  # on SDXL with its pooled text (the sampler sets
        return SldRule(concept, **PRESETS[self.preset])  # the time ids of the image's size)


class SldRule(GuidanceRule):
    """The per-step SLD combination; holds the momentum nu of the batch being sampled."""

    def __init__(self, concept: UNetCondition, warmup_steps: int, guidance_scale: float, threshold: float,
                 momentum_scale: float, mom_beta: float) -> None:
        self.concept = concept
        self.warmup, self.s_s, self.threshold = warmup_steps, guidance_scale, threshold
        self.s_m, self.beta_m = momentum_scale, mom_beta
        self.momentum: torch.Tensor | None = None

    def extra_embeddings(self, batch_size: int) -> list[UNetCondition]:
        self.momentum = None  # a new batch starts a new trajectory
        return [self.concept.expand(batch_size)]

    def combine(self, step, eps_uncond, eps_text, extras, guidance_scale):
        eps_safety = extras[0]
        guidance = eps_text - eps_uncond
        if self.momentum is None:
            self.momentum = torch.zeros_like(guidance)
        difference = eps_text - eps_safety
        scale = torch.clamp(difference.abs() * self.s_s, max=1.0)  # Eq. 6
        mu = torch.where(difference >= self.threshold, torch.zeros_like(scale), scale)  # Eq. 6
        safety = mu * (eps_safety - eps_uncond)  # Eq. 4
        safety = safety + self.s_m * self.momentum  # Eq. 7
        self.momentum = self.beta_m * self.momentum + (1 - self.beta_m) * safety  # Eq. 8
        if step >= self.warmup:
            guidance = guidance - safety  # Eq. 3
        return eps_uncond + guidance_scale * guidance
