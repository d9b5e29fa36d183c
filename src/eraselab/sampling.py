"""Classifier-free guided sampling with a pluggable guidance rule, for guards (and later attacks) that change how
the noise predictions of one step are combined.

The loop takes the same steps as ``StableDiffusionPipeline.__call__`` and ``StableDiffusionXLPipeline.__call__``
(timesteps, ``scale_model_input``, one batched UNet call per step, on SDXL with the pooled text and the time ids of
the image's size, ``scheduler.step`` with the per-image generators, VAE decode, postprocess), so with the plain rule
it gives the pipeline's images bit for bit (tested on both). diffusers offers no hook between the UNet call
and the guidance combination (``callback_on_step_end`` sees only the latents after the step), hence this loop.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from diffusers import DDIMScheduler

from eraselab.models.conditioning import Conditioning, UNetCondition, is_sdxl


def training_sampler(pipe, steps: int) -> DDIMScheduler:
    """The DDIM schedule the trained erasers draw their x_t with, whatever the pipeline samples with (the reference
    ESD script draws x_t with DDIM too): it keeps no state between steps, so each draw depends only on its own
    seeds. PNDM (SD-1.4's own scheduler) and the multistep DPM-Solver carry state from step to step, which made
    x_t depend on earlier iterations, a resumed run differ from an uninterrupted one, and PNDM's counter run past
    its schedule (IndexError). ``clip_sample`` is DDIM's own only where the config names it: a latent model's
    scheduler (Euler on SDXL) may not, and DDIM's default would clip the latents' x_0 to [-1, 1]."""
    config = pipe.scheduler.config
    scheduler = DDIMScheduler.from_config(config, clip_sample=config.get("clip_sample", False))
    scheduler.set_timesteps(steps)
    return scheduler


@torch.no_grad()
def sample_until(unet, scheduler, latents: torch.Tensor, cond: UNetCondition, uncond: UNetCondition,
                 guidance: float, stop: int, inputs: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Run the first ``stop`` steps of ``scheduler``'s timesteps (set by the caller) of classifier-free guided
    sampling from ``latents`` with a frozen UNet; ``inputs`` (when given) receives the UNet's input at each step.
    The trained erasers draw their x_t with it (ESD, AdvUnlearn; TRCE keeps the inputs as its trajectories)."""
    both = UNetCondition.cat([uncond, cond]).unet_kwargs()
    for t in scheduler.timesteps[:stop]:
        model_input = scheduler.scale_model_input(latents, t)  # the sample itself for DDIM
        if inputs is not None:
            inputs.append(model_input.cpu())
        eps_uncond, eps_cond = unet(torch.cat([model_input] * 2), t, **both).sample.chunk(2)
        latents = scheduler.step(eps_uncond + guidance * (eps_cond - eps_uncond), t, latents).prev_sample
    return latents


def prediction_target(scheduler, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet predicts at ``scheduler.add_noise(sample, noise, timesteps)``: the noise for epsilon models
    (SD 1.x), the velocity v = sqrt(a_t) eps - sqrt(1 - a_t) x_0 for v-prediction ones (SD 2.x at 768 px;
    Salimans & Ho, ICLR 2022), the clean sample for sample-prediction ones. Denoising losses compare the UNet's
    output with this, so they hold for every parameterisation."""
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(sample, noise, timesteps)
    if kind == "sample":
        return sample
    raise ValueError(f"unknown prediction_type {kind!r}")


class GuidanceRule:
    """How one step's noise predictions become the one the scheduler steps with. Subclasses override
    :meth:`combine` and, where they need to, the hooks (each a no-op here)."""

    def start(self, pipe, prompts: list[str], positive: torch.Tensor, negative: torch.Tensor) -> None:
        """Called once per batch before the first step, with the batch's prompts and encodings."""

    def extra_embeddings(self, batch_size: int) -> list[UNetCondition]:
        """Further conditionings (each of ``batch_size`` rows; on SDXL with their pooled text; the sampler sets the
        time ids of the image's size) the UNet is run on besides the negative and positive prompts."""
        return []

    def embeddings(self, step: int, positive: torch.Tensor, negative: torch.Tensor) -> tuple[torch.Tensor,
                                                                                          torch.Tensor]:
        """The (positive, negative) encodings to condition step ``step`` on."""
        return positive, negative

    def before_step(self, step: int, pipe) -> None:
        """Called before each UNet call (e.g. to switch a UNet feature on or off for this step)."""

    def finish(self, pipe) -> None:
        """Called after the last step, also when sampling fails: undo whatever the hooks changed."""

    def combine(self, step: int, eps_uncond: torch.Tensor, eps_text: torch.Tensor, extras: list[torch.Tensor],
                guidance_scale: float) -> torch.Tensor:
        raise NotImplementedError


class PlainGuidance(GuidanceRule):
    """Classifier-free guidance, eps = eps(neg) + s (eps(p) - eps(neg)), exactly as the pipeline computes it."""

    def combine(self, step, eps_uncond, eps_text, extras, guidance_scale):
        return eps_uncond + guidance_scale * (eps_text - eps_uncond)


def guided_noise(pipe, rule: GuidanceRule, step: int, model_input: torch.Tensor, t: torch.Tensor,
                 positive: UNetCondition, negative: UNetCondition, extras: list[UNetCondition],
                 guidance_scale: float) -> torch.Tensor:
    """One step's guided noise: the UNet on the (scaled) latents ``model_input`` under the negative, positive and
    extra conditionings in one batched call, combined by ``rule``. The body of every sampling step, and what a
    gradient attack differentiates through (:mod:`eraselab.attack.defended_noise`)."""
    step_positive, step_negative = rule.embeddings(step, positive.context, negative.context)
    copies = 2 + len(extras)
    rule.before_step(step, pipe)
    conditions = UNetCondition.cat([replace(negative, context=step_negative),
                                    replace(positive, context=step_positive), *extras])
    eps = pipe.unet(torch.cat([model_input] * copies), t, **conditions.unet_kwargs(), return_dict=False)[0]
    parts = eps.chunk(copies)
    return rule.combine(step, parts[0], parts[1], list(parts[2:]), guidance_scale)


@torch.no_grad()
def guided_sample(pipe, conditioning: Conditioning, latents: torch.Tensor, steps: int, guidance_scale: float,
                  generators: list[torch.Generator], rule: GuidanceRule,
                  prompts: list[str] | None = None) -> np.ndarray:
    """(B, H, W, 3) float images in [0, 1] from initial ``latents`` (unscaled draws, as passed to the pipeline)."""
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps, device=pipe.device)
    latents = latents.to(pipe.device) * scheduler.init_noise_sigma
    height, width = (side * pipe.vae_scale_factor for side in latents.shape[-2:])
    positive, negative = conditioning.for_unet(pipe, height, width)
    rule.start(pipe, prompts or [""] * len(latents), positive.context, negative.context)
    extras = [replace(extra, time_ids=positive.time_ids) for extra in rule.extra_embeddings(len(latents))]
    step_kwargs = pipe.prepare_extra_step_kwargs(generators, 0.0)
    try:
        for i, t in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(latents, t)
            guided = guided_noise(pipe, rule, i, model_input, t, positive, negative, extras, guidance_scale)
            latents = scheduler.step(guided, t, latents, **step_kwargs, return_dict=False)[0]
    finally:
        rule.finish(pipe)
    return decode(pipe, latents, generators)


def decode(pipe, latents: torch.Tensor, generators: list[torch.Generator]) -> np.ndarray:
    """The pipeline's own last stage, (B, H, W, 3) in [0, 1]. SDXL's adds three things, done here as its
    ``__call__`` does them: a float16 VAE whose config says ``force_upcast`` (SDXL base's overflows in float16)
    decodes in float32, latents are un-normalised with ``latents_mean``/``latents_std`` where the VAE has them,
    and the pipeline's watermarker, when it has one, marks the image."""
    vae = pipe.vae
    if not is_sdxl(pipe):
        image = vae.decode(latents / vae.config.scaling_factor, return_dict=False, generator=generators)[0]
        return pipe.image_processor.postprocess(image, output_type="np", do_denormalize=[True] * image.shape[0])
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        vae.to(dtype=torch.float32)
        latents = latents.to(torch.float32)
    try:
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean, std = (torch.tensor(v).view(1, -1, 1, 1).to(latents.device, latents.dtype) for v in (mean, std))
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        image = vae.decode(latents, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
    if getattr(pipe, "watermark", None) is not None:
        image = pipe.watermark.apply_watermark(image)
    return pipe.image_processor.postprocess(image, output_type="np")
