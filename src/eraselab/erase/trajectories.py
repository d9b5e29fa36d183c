"""Early denoising trajectories of a frozen model, sampled once and kept as tensors (TRCE's stage-2 data).

For each prompt and seed, the model samples with classifier-free guidance from noise, and the UNet's input at each
of the schedule's first ``early`` steps is kept, with its timestep: what the fine-tuned model will be asked about.
They are stored as safetensors with the settings that made them in the header (never a pickle), and regenerated from
their seeds when the file is missing or was made with other settings.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from eraselab.models import pipeline_fingerprint
from eraselab.models.conditioning import UNetCondition, guidance_conditions
from eraselab.sampling import sample_until

CHUNK = 8  # trajectories sampled per batched UNet call


@dataclass(frozen=True)
class Trajectories:
    inputs: torch.Tensor  # (N, K, C, H, W): the UNet's input at each of the first K steps
    timesteps: torch.Tensor  # (K,)


def early_steps(steps: int, fraction: float) -> int:
    """How many of the schedule's ``steps`` timesteps are "early": the first ``fraction`` of them (at least one)."""
    return max(1, round(steps * fraction))


def _sample(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, early: int,
            progress: bool) -> Trajectories:
    def fresh():  # per batch: PNDM (SD-1.4's own) keeps its last predictions between steps
        scheduler = copy.deepcopy(pipe.scheduler)
        scheduler.set_timesteps(steps, device=pipe.device)
        return scheduler

    scheduler = fresh()
    timesteps = scheduler.timesteps[:early]
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    kept = []
    with torch.no_grad():
        for start in tqdm(range(0, len(prompts), CHUNK), desc="trajectories", disable=not progress, leave=False):
            batch, batch_seeds = prompts[start:start + CHUNK], seeds[start:start + CHUNK]
            cond, uncond = guidance_conditions(pipe, batch)  # "" samples unconditionally (SDXL base: zeros)
            cond = UNetCondition.cat([(cond if p else uncond).rows(slice(i, i + 1)) for i, p in enumerate(batch)])
            latents = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in batch_seeds])
            latents = latents.to(pipe.device, cond.context.dtype) * scheduler.init_noise_sigma
            inputs: list[torch.Tensor] = []
            sample_until(pipe.unet, fresh(), latents, cond, uncond, guidance, early, inputs)
            kept.append(torch.stack(inputs, 1))
    return Trajectories(torch.cat(kept), timesteps.cpu())


def trajectories(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, early: int,
                 path: str | Path | None = None, progress: bool = True) -> Trajectories:
    """The early trajectories of ``pipe`` for ``prompts`` (one per prompt, each from its seed), read from ``path``
    when it holds them for these settings and this model, else sampled (and written there)."""
    identity = json.dumps({"prompts": prompts, "seeds": seeds, "steps": steps, "guidance": guidance, "early": early,
                           "model": pipeline_fingerprint(pipe), "scheduler": type(pipe.scheduler).__name__})
    file = Path(path) if path else None
    if file is not None and file.is_file():
        with safe_open(file, "pt") as handle:
            if handle.metadata().get("eraselab") == identity:
                return Trajectories(handle.get_tensor("inputs"), handle.get_tensor("timesteps"))
    found = _sample(pipe, prompts, seeds, steps, guidance, early, progress)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_name(f"{file.name}.{os.getpid()}.partial")  # processes of one launch write it alike
        save_file({"inputs": found.inputs.contiguous(), "timesteps": found.timesteps.contiguous()}, partial,
                  metadata={"eraselab": identity})
        partial.replace(file)
    return found
