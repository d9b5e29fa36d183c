"""The noise a guarded sampler steps with, differentiable in the prompt encoding: how gradient attacks put an
inference-time guard into their loss (P4D does so for SLD and the negative prompt).

A guard acts in two places (:mod:`eraselab.guard`): it may rewrite the request (the negative-prompt guard sets the
negative prompt) and it may replace the guidance rule of every step (SLD). Both are replayed here exactly as
:func:`eraselab.sampling.guided_sample` runs them, on one latent batch at one step:
    eps = rule.combine(eps(negative), eps(condition), [eps(extra) ...], guidance).
Guards whose action is not differentiable in the prompt encoding say so (``differentiable = False``, SAFREE: it
masks discrete tokens and projects a detached encoding); an attack on them stays a black-box search whose oracle
queries the guard.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from eraselab.errors import EraselabError
from eraselab.models.conditioning import UNetCondition, encode_batch
from eraselab.requests import GenerationRequest
from eraselab.sampling import PlainGuidance, guided_noise


class DefendedNoise:
    """``noise(latents, t, condition, step)``: the guided noise prediction of ``pipe`` under ``guard`` (or plain
    classifier-free guidance without one) for the prompt's conditioning ``condition`` (its context (B, T, C) with
    gradients; on SDXL its pooled text and time ids), with ``guidance=None`` (and no guard), the conditional
    prediction alone, as P4D's loss compares without a guard."""

    def __init__(self, pipe, guard, guidance: float | None) -> None:
        if guard is not None and not getattr(guard, "differentiable", False):
            raise EraselabError(f"the guard {guard.label} cannot be put into a gradient attack's loss")
        if guard is not None and guidance is None:
            raise EraselabError("a guard acts through guidance: give the guidance scale")
        self.pipe, self.guidance = pipe, guidance
        if guidance is None:
            self.calls = 1  # UNet evaluations per latent
            return
        self.rule = (guard.guidance_rule(pipe) if guard is not None else None) or PlainGuidance()
        negative = guard.rewrite(GenerationRequest("", 0)).negative_prompt if guard is not None else ""
        self.negative = encode_batch(pipe, [""], [negative])  # as the sampler encodes it (SDXL: zeros for "")
        self.calls = 2 + len(self.rule.extra_embeddings(1))  # UNet evaluations per latent

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, condition: UNetCondition, step: int) -> torch.Tensor:
        if self.guidance is None:
            return self.pipe.unet(latents, t, **condition.unet_kwargs()).sample
        batch = len(latents)
        height, width = (side * self.pipe.vae_scale_factor for side in latents.shape[-2:])
        negative = self.negative.for_unet(self.pipe, height, width)[1].expand(batch)
        self.rule.start(self.pipe, [""] * batch, condition.context, negative.context)
        extras = [replace(extra, time_ids=negative.time_ids)  # a new batch: SLD's momentum starts at zero here
                  for extra in self.rule.extra_embeddings(batch)]
        try:
            return guided_noise(self.pipe, self.rule, step, latents, t, condition, negative, extras, self.guidance)
        finally:
            self.rule.finish(self.pipe)
