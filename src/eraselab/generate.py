"""Batched, deterministic image generation: one request, one seed, one image, whatever the batch.

Each request draws its initial latents from its own ``torch.Generator`` seeded with the request's seed, and
the pipeline is called with one generator per image. Requests that share sampler settings are batched together
through the plain ``StableDiffusionPipeline.__call__``, by the :class:`~eraselab.batching.Batching` policy: by
default every call has the same number of rows and each request always takes the same row, so its image does not
depend on the other requests or their order on any CPU (the policy's docstring says why nothing less holds).

>>> from eraselab.models import load_pipeline
>>> pipe = load_pipeline("tiny")
>>> images = generate_images(pipe, [GenerationRequest("a red star", seed=0, steps=2)], progress=False)
>>> images[0].size
(32, 32)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from tqdm.auto import tqdm

from eraselab.batching import DEFAULT_BATCHING, Batching
from eraselab.errors import EraselabError
from eraselab.guard import Guard
from eraselab.models.conditioning import Conditioning, encode_batch, is_sdxl
from eraselab.models.vocabulary import require_known_words
from eraselab.requests import GenerationRequest
from eraselab.sampling import guided_sample


def check_size(pipe: StableDiffusionPipeline, height: int | None, width: int | None) -> None:
    """Refuse an image size the model cannot make: a positive multiple of what its VAE and UNet divide it by."""
    step = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    for name, value in (("height", height), ("width", width)):
        if value is not None and (value < step or value % step):
            raise EraselabError(f"{name} must be a positive multiple of {step} for this model, got {value}")


def check_requests(pipe: StableDiffusionPipeline, requests: Sequence[GenerationRequest]) -> None:
    """Refuse requests the model cannot honour, with one sentence that says which and why."""
    if not requests:
        raise EraselabError("nothing to generate: no requests")
    require_known_words(pipe, [r.prompt for r in requests if r.prompt_embeds is None]
                        + [r.negative_prompt for r in requests], "words outside the model's vocabulary")
    for request in requests:
        if request.steps < 1:
            raise EraselabError(f"steps must be at least 1, got {request.steps}")
        if request.pooled_embeds is not None and not is_sdxl(pipe):
            raise EraselabError("pooled text embeddings condition SDXL only; this model has one text encoder")
    for size in {(r.height, r.width) for r in requests}:
        check_size(pipe, *size)


def _initial_latents(pipe: StableDiffusionPipeline, batch: Sequence[GenerationRequest],
                     generators: list[torch.Generator]) -> torch.Tensor:
    height = batch[0].height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = batch[0].width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    shape = (1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    # One draw per request from its own generator (on the CPU, so the same seed gives the same noise on any
    # device); the pipeline (or guided_sample) scales it by the scheduler's init_noise_sigma.
    latents = torch.cat([randn_tensor(shape, generator=g, dtype=torch.float32) for g in generators])
    return latents.to(pipe.device, pipe.unet.dtype)


def _encode(pipe, batch: Sequence[GenerationRequest]) -> Conditioning:
    conditioning = encode_batch(pipe, [r.prompt for r in batch], [r.negative_prompt for r in batch])
    for i, request in enumerate(batch):
        if request.prompt_embeds is not None:  # e.g. an attack's optimised embeddings (SDXL keeps the pooled text's)
            conditioning.positive[i] = request.prompt_embeds.detach().to(conditioning.positive.device,
                                                                         conditioning.positive.dtype)[0]
        if request.pooled_embeds is not None:  # ... unless the attack made that too
            conditioning.pooled[i] = request.pooled_embeds.detach().to(conditioning.pooled.device,
                                                                       conditioning.pooled.dtype)[0]
    return conditioning


def iter_generate(pipe: StableDiffusionPipeline, requests: Sequence[GenerationRequest],
                  batching: Batching = DEFAULT_BATCHING, progress: bool = True,
                  guard: Guard | None = None) -> Iterator[tuple[int, Image.Image]]:
    """Yield ``(index into requests, PIL image)`` as each call finishes (calls share sampler settings; see
    :class:`Batching`). A ``guard`` (:mod:`eraselab.guard`) may rewrite the requests and the guidance of every
    step."""
    if guard is not None:
        requests = [guard.rewrite(r) for r in requests]
    check_requests(pipe, requests)
    rule = guard.guidance_rule(pipe) if guard is not None else None
    batching = batching.resolved(pipe)
    groups: dict[tuple, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(request.settings(), []).append(index)
    bar = tqdm(total=len(requests), desc="generate", unit="img", disable=not progress)
    for indices in groups.values():
        slots = [batching.slot(requests[i].prompt, requests[i].seed) for i in indices]
        for rows in batching.calls(slots):
            taken = [(row, indices[r]) for row, r in enumerate(rows) if r is not None]
            filler = requests[taken[0][1]]  # padding rows: a copy of a request of the call, its image dropped
            batch = [requests[indices[r]] if r is not None else filler for r in rows]
            generators = [torch.Generator("cpu").manual_seed(r.seed) for r in batch]
            conditioning = _encode(pipe, batch)
            first = batch[0]
            latents = _initial_latents(pipe, batch, generators)
            if rule is None:
                with torch.no_grad():
                    arrays = pipe(**conditioning.pipeline_kwargs(), latents=latents, generator=generators,
                                  num_inference_steps=first.steps,
                                  guidance_scale=first.guidance, height=first.height, width=first.width,
                                  output_type="np").images
            else:
                arrays = guided_sample(pipe, conditioning, latents, first.steps, first.guidance, generators, rule,
                                       [r.prompt for r in batch])
            for row, i in taken:
                yield i, Image.fromarray(np.round(arrays[row] * 255).astype(np.uint8))
            bar.update(len(taken))
    bar.close()


def generate_images(pipe: StableDiffusionPipeline, requests: Sequence[GenerationRequest],
                    batching: Batching = DEFAULT_BATCHING, progress: bool = True,
                    guard: Guard | None = None) -> list[Image.Image]:
    """Images for ``requests``, in request order."""
    images: list[Image.Image | None] = [None] * len(requests)
    for index, image in iter_generate(pipe, requests, batching, progress, guard):
        images[index] = image
    return images  # type: ignore[return-value]
