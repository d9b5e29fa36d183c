"""Images per second: eraselab's generate vs. calling the plain diffusers pipeline on the same requests.

Both sides run in this one process on the same pipeline object, the same 64 requests (16 prompts x 4 seeds,
25 DDIM steps, guidance 5.0), the same batch size and one generator per image; each side is timed
``--repeats`` times, alternating, and the median is reported. Also prints the wall time of 64 images at 25
steps (the foundation issue's bar: <= 20 s on a 2-core CPU) and whether both sides gave identical pixels.

    python benchmarks/generation.py [--model tiny] [--batch-size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from eraselab.generate import GenerationRequest, generate_images
from eraselab.models import load_pipeline
from eraselab.models.tiny.world import load_world


def plain_diffusers(pipe, requests: list[GenerationRequest], batch_size: int) -> list:
    images = []
    for start in range(0, len(requests), batch_size):
        batch = requests[start:start + batch_size]
        output = pipe(prompt=[r.prompt for r in batch], negative_prompt=[r.negative_prompt for r in batch],
                      generator=[torch.Generator("cpu").manual_seed(r.seed) for r in batch],
                      num_inference_steps=batch[0].steps, guidance_scale=batch[0].guidance, output_type="pil")
        images.extend(output.images)
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    world = load_world()
    pipe = load_pipeline(args.model)
    prompts = [world.prompt(s, c) for s in range(len(world.shapes)) for c in range(len(world.colors))][:16]
    requests = [GenerationRequest(p, seed) for p in prompts for seed in range(4)]
    run = {
        "eraselab": lambda: generate_images(pipe, requests, batch_size=args.batch_size, progress=False),
        "diffusers": lambda: plain_diffusers(pipe, requests, args.batch_size),
    }
    for fn in run.values():  # warm-up: first calls pay for lazy initialisation
        fn()
    times: dict[str, list[float]] = {name: [] for name in run}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in run.items():
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    rate = {name: len(requests) / t for name, t in median.items()}
    same = all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(outputs["eraselab"], outputs["diffusers"], strict=True))
    print(f"model={args.model} requests={len(requests)} steps=25 batch={args.batch_size} "
          f"threads={torch.get_num_threads()} repeats={args.repeats}")
    for name in run:
        print(f"{name:10s} {rate[name]:7.2f} images/s   ({median[name]:.2f} s for {len(requests)} images)")
    print(f"ratio eraselab/diffusers: {rate['eraselab'] / rate['diffusers']:.3f} (goal >= 0.95)")
    print(f"identical pixels: {same}")


if __name__ == "__main__":
    main()
