"""The cheap attacks' cost per prompt against one image generation, measured in one run on the tiny model.

    python benchmarks/attacks.py

For the UCE edit of "star" (tiny defaults) and the 6 prompts of ``tiny:target:star``: wall time per prompt of
``embedding-recovery`` and of ``concept-vector`` without search, and of generating one image (25 steps, batch of
6, one image per prompt), best of 5. The issue's bar: both attacks cost less than one image generation.

Then UnlearnDiffAtk's gradient step over 8 timesteps of the schedule: one batched UNet call against the paper's
one-timestep-at-a-time schedule (8 calls, gradients accumulated), the same loss and gradient; the time ratio.
"""

from __future__ import annotations

import time

import _quiet  # noqa: F401  (quiets the libraries before they load)
from eraselab.attack.base import AttackSpec
from eraselab.attack.concept_vector import ConceptVectorConfig
from eraselab.attack.concept_vector import attack as concept_vector
from eraselab.attack.embedding_recovery import EmbeddingRecoveryConfig
from eraselab.attack.embedding_recovery import attack as embedding_recovery
from eraselab.erase.artifact import apply_edit
from eraselab.erase.spec import EraseSpec
from eraselab.erase.uce import UceConfig, erase
from eraselab.generate import generate_images
from eraselab.models import load_pipeline
from eraselab.models.tiny.suites import tiny_suite
from eraselab.models.tiny.world import load_world
from eraselab.profile import TINY
from eraselab.requests import GenerationRequest


def best(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    reference, target = load_pipeline("tiny"), load_pipeline("tiny")
    spec = EraseSpec(("star",), ("shape",), templates=load_world().erase_templates("star"))
    apply_edit(target, erase(reference, spec, TINY.config(UceConfig)))
    prompts = tuple(i.prompt for i in tiny_suite("target", "star").items)
    attack_spec = AttackSpec("star", prompts)
    n = len(prompts)
    recovery = best(lambda: embedding_recovery(target, attack_spec, EmbeddingRecoveryConfig(), reference)) / n
    vector = best(lambda: concept_vector(target, attack_spec, ConceptVectorConfig())) / n
    requests = [GenerationRequest(p, 0) for p in prompts]
    image = best(lambda: generate_images(target, requests, progress=False)) / n
    print(f"one image (25 steps)            {image * 1000:8.2f} ms per prompt")
    print(f"embedding-recovery              {recovery * 1000:8.2f} ms per prompt   {recovery / image:6.3f} of an image")
    print(f"concept-vector (no search)      {vector * 1000:8.2f} ms per prompt   {vector / image:6.3f} of an image")
    unlearndiff_steps(reference, target)


def unlearndiff_steps(reference, target, count: int = 8) -> None:
    import torch

    from eraselab.attack.soft_prompt import insert_relaxed_tokens
    from eraselab.attack.unlearndiff import denoising_loss, target_latents

    spec = AttackSpec("star", ("a red star",))
    latent = target_latents(reference, [("a red star", 1000)], spec)[0]
    tokenizer = target.tokenizer
    ids = tokenizer("a red star", padding="max_length", max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    target.scheduler.set_timesteps(spec.steps)
    timesteps = target.scheduler.timesteps.tolist()[:count]
    noises = torch.randn(count, *latent.shape[1:], generator=torch.Generator().manual_seed(0))
    relaxed = torch.softmax(torch.randn(1, 5, len(tokenizer), generator=torch.Generator().manual_seed(1)), -1)
    relaxed.requires_grad_(True)
    target.unet.requires_grad_(False)
    target.text_encoder.requires_grad_(False)
    results = {}

    def step(batched: bool) -> None:
        relaxed.grad = None
        embeddings = insert_relaxed_tokens(target.text_encoder, ids, relaxed)
        loss = denoising_loss(target, [embeddings], latent, timesteps, noises, batched=batched)
        loss.backward()
        results[batched] = (loss.item(), relaxed.grad.clone())

    batched = best(lambda: step(True))
    sequential = best(lambda: step(False))
    same = torch.allclose(results[True][1], results[False][1], rtol=1e-4, atol=1e-7)
    print(f"unlearndiff step, {count} timesteps: batched {batched * 1000:.1f} ms, one at a time "
          f"{sequential * 1000:.1f} ms, ratio {sequential / batched:.2f}x; loss {results[True][0]:.6f} vs "
          f"{results[False][0]:.6f}, same gradient: {same}")


if __name__ == "__main__":
    main()
