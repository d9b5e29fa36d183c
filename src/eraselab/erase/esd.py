"""ESD: Erasing Concepts from Diffusion Models (Gandikota, Materzynska, Fiotto-Kaufman, Bau; ICCV 2023).

ESD fine-tunes a copy of the UNet so that, conditioned on the concept c, it predicts the noise of *negatively*
guided sampling from the frozen model theta* (Eq. 4 of the paper):
    eps_theta(x_t, c, t)  <-  eps*(x_t, t) - eta (eps*(x_t, c, t) - eps*(x_t, t)),
with the L2 loss of Eq. 5. x_t is drawn by sampling from the frozen model, conditioned on c with guidance
``start_guidance``, from noise down to a random step t of a ``ddim_steps``-step DDIM schedule, as the reference
training script does.

ESD itself keeps nothing: its only term pulls the concept's prediction away. When the spec names preserved
concepts, the loss gains the utility-retaining term of AdvUnlearn (Zhang et al., "Defensive Unlearning with
Adversarial Training for Robust Concept Erasure in Diffusion Models", NeurIPS 2024: the utility-retaining
regularisation on a retain set of prompts):
    L = L_ESD + gamma * E_{c~ in retain} || eps_theta(x~_t, c~, t) - eps*(x~_t, c~, t) ||^2,
with x~_t sampled from the frozen model under the preserved prompt c~ to the same step, gamma = ``preserve_weight``
(AdvUnlearn's 0.3). Without preserved concepts the method is the paper's ESD, unchanged.

Which parameters train is data (the variant):
- ``esd-x``: every cross-attention parameter (to_q, to_k, to_v, to_out of each attn2), for concepts tied to a
  prompt (artists, objects);
- ``esd-x-strict``: only the cross-attention key and value projections;
- ``esd-u``: everything in the UNet outside cross-attention, for concepts that appear without being named
  (nudity).

Defaults: the paper's for Stable Diffusion 1.4 (esd-x, 1,000 iterations, Adam lr 1e-5, eta 1, start guidance 3,
50 DDIM steps, batch 1; retain weight 0.3 as AdvUnlearn when a preserve set is given); on the tiny model
(``tiny_overrides``): esd-x-strict, 300 iterations, lr 1e-3, batch 4, 25 DDIM steps, retain weight 1.5, prompts
crossed with every colour (what was measured: ``docs/tiny-measurements.md``).
On SDXL (the authors' ``esd_sdxl.py``) the UNet also reads the pooled text embedding and the micro-conditioning
time ids; every prediction here gets them as ``pipe(prompt)`` makes them (:func:`eraselab.models.conditioning.
guidance_conditions`: for the unconditional prediction, the zero embeddings SDXL base samples with where its script
encodes ""). Its script's settings differ from SD 1.4's: esd-x, 200 iterations, lr 2e-4 (1e-5 for the other
variants, which it calls experimental), x_t drawn at guidance 2, 1024 px, bfloat16: on an SDXL directory they are the
defaults (``sdxl_overrides``; give ``lr: 1e-5`` with ``esd-u``), at the UNet's own size, in float32 (the trained
erasers refuse 16-bit weights).
Training is seeded per iteration (the same seed gives the same weights) and, with ``checkpoint`` set, saved every
``checkpoint_every`` iterations and resumed from there.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from eraselab.erase.artifact import Edit
from eraselab.erase.cross_attention_edit import check_spec_words
from eraselab.erase.finetune import FineTune, LoopSettings, copy_for_training, frozen_weights
from eraselab.erase.registry import MethodEntry
from eraselab.erase.spec import EraseSpec
from eraselab.errors import EraselabError
from eraselab.models import cross_attention_layers, pipeline_fingerprint
from eraselab.models.conditioning import UNetCondition, guidance_conditions
from eraselab.sampling import sample_until, training_sampler

VARIANTS = ("esd-x", "esd-x-strict", "esd-u")


@dataclass(frozen=True)
class EsdConfig:
    variant: str = "esd-x"
    iterations: int = 1000
    lr: float = 1e-5
    negative_guidance: float = 1.0  # eta of Eq. 4
    start_guidance: float = 3.0  # guidance of the sampling that draws x_t
    ddim_steps: int = 50
    batch_size: int = 1
    seed: int = 0
    preserve_weight: float = 0.3  # gamma of AdvUnlearn's retain term; used only when the spec preserves concepts
    checkpoint: str | None = None  # directory to save progress in and resume from
    checkpoint_every: int = 50

    # Tiny: measured on star, red and outlined; what each setting gave is in docs/tiny-measurements.md.
    tiny_overrides: ClassVar[dict] = {"variant": "esd-x-strict", "iterations": 300, "lr": 1e-3, "batch_size": 4,
                                      "ddim_steps": 25, "preserve_weight": 1.5}
    # SDXL: the authors' esd_sdxl.py (esd-x; it drops lr to 1e-5 for the other variants, which it calls experimental)
    sdxl_overrides: ClassVar[dict] = {"iterations": 200, "lr": 2e-4, "start_guidance": 2.0}


def trained_parameter_names(unet, variant: str) -> list[str]:
    """The UNet parameters ``variant`` trains."""
    if variant not in VARIANTS:
        raise EraselabError(f"ESD variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    cross = [layer.name + "." for layer in cross_attention_layers(unet)]
    names = []
    for name, _ in unet.named_parameters():
        inside = any(name.startswith(prefix) for prefix in cross)
        key_or_value = ".to_k." in name or ".to_v." in name
        wanted = {"esd-u": not inside, "esd-x": inside, "esd-x-strict": inside and key_or_value}[variant]
        if wanted:
            names.append(name)
    return names


def erase(pipe, spec: EraseSpec, config: EsdConfig, progress: bool = True,
          stop_after: int | None = None) -> Edit | None:
    """Fine-tune the ``config.variant`` parameters of a copy of ``pipe.unet`` (``pipe`` is not changed).
    ``stop_after`` ends the run after that many iterations, as a kill would (after its checkpoint), returning None."""
    start = time.perf_counter()
    if config.iterations < 1 or config.batch_size < 1 or config.ddim_steps < 2:
        raise EraselabError("iterations and batch_size must be at least 1 and ddim_steps at least 2")
    if any(a for a in spec.anchors):
        raise EraselabError("ESD erases towards the unconditional prediction; it takes no anchor")
    if config.preserve_weight < 0:
        raise EraselabError(f"preserve_weight must be >= 0, got {config.preserve_weight}")
    prompts = [target for target, _ in check_spec_words(pipe, spec)]  # every concept in every template
    with frozen_weights(pipe.unet.eval()) as frozen:
        return _train(pipe, frozen, spec, config, prompts, start, progress, stop_after)


def _train(pipe, frozen, spec: EraseSpec, config: EsdConfig, prompts: list[str], start: float,
           progress: bool, stop_after: int | None) -> Edit | None:
    trained_names = trained_parameter_names(frozen, config.variant)
    unet = copy_for_training(frozen, trained_names)  # shares every weight it does not train with the frozen UNet
    settings = LoopSettings(iterations=config.iterations, lr=config.lr, seed=config.seed, optimizer="adam",
                            checkpoint=config.checkpoint, checkpoint_every=config.checkpoint_every)
    identity = {"esd": asdict(config) | {"checkpoint": None}, "spec": asdict(spec), "base": pipeline_fingerprint(pipe)}
    loop = FineTune(unet, trained_names, settings, identity, f"ESD {config.variant}", original=frozen)
    scheduler = training_sampler(pipe, config.ddim_steps)
    retain_prompts = spec.preserved() if config.preserve_weight > 0 else []
    cond_all, uncond = guidance_conditions(pipe, prompts)  # on SDXL with the pooled text and time ids
    retain_all = guidance_conditions(pipe, retain_prompts)[0] if retain_prompts else None
    uncond = uncond.rows(slice(0, 1))
    shape = (config.batch_size, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)

    def step(_: int, g: torch.Generator) -> torch.Tensor:
        pick = torch.randint(len(prompts), (config.batch_size,), generator=g)
        stop = int(torch.randint(config.ddim_steps, (1,), generator=g))  # t ~ U{0..ddim_steps-1}
        noise = torch.randn(shape, generator=g).to(pipe.device, unet.dtype)
        cond = cond_all.rows(pick)
        n = config.batch_size
        if retain_all is not None:  # the retained prompts ride in the same batches as the erased ones
            kept = retain_all.rows(torch.randint(len(retain_all), (n,), generator=g))
            cond = UNetCondition.cat([cond, kept])
            noise = torch.cat([noise, torch.randn(shape, generator=g).to(pipe.device, unet.dtype)])
        blank = uncond.expand(len(cond))
        x_t = sample_until(frozen, scheduler, noise, cond, blank, config.start_guidance, stop)
        t = scheduler.timesteps[stop]
        with torch.no_grad():
            eps_blank = frozen(x_t[:n], t, **blank.rows(slice(0, n)).unet_kwargs()).sample  # eps*(x_t, t)
            eps_cond = frozen(x_t, t, **cond.unet_kwargs()).sample  # eps*(x_t, c, t), and eps*(x~_t, c~, t)
            goal = eps_blank - config.negative_guidance * (eps_cond[:n] - eps_blank)  # Eq. 4
        prediction = unet(x_t, t, **cond.unet_kwargs()).sample
        loss = torch.nn.functional.mse_loss(prediction[:n], goal)  # Eq. 5
        if retain_all is not None:  # AdvUnlearn's retain term
            loss = loss + config.preserve_weight * torch.nn.functional.mse_loss(prediction[n:], eps_cond[n:])
        return loss

    trained = loop.run(step, progress, stop_after)
    if trained is None:
        return None
    tensors = {f"unet.{n}": tensor for n, tensor in trained.items()}
    manifest = {"method": "esd", "config": asdict(config), "concepts": list(spec.concepts), "anchors": [],
                "preserve": list(spec.preserve), "templates": list(spec.templates),
                "base_fingerprint": pipeline_fingerprint(pipe), "seed": config.seed, "final_loss": loop.last_loss,
                "sampler": {"scheduler": "DDIMScheduler", "steps": config.ddim_steps, "eta": 0.0},
                "seconds": round(time.perf_counter() - start, 3)}
    return Edit(tensors, manifest)


METHOD = MethodEntry(erase, EsdConfig)
