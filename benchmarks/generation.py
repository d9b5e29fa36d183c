"""Images per second: eraselab's generate vs. calling the plain diffusers pipeline on the same requests.

Both sides run in this one process on the same pipeline object with one generator per image, at the same batch
size; each side is timed ``--repeats`` times, alternating, and the median is reported. Three workloads:

- ``grid``: 64 requests (16 prompts x 4 seeds, 25 DDIM steps, guidance 5.0), as an experiment generates them;
- ``lone``: one request, as ``eraselab generate --prompt ... --num-images 1`` does;
- ``oracle``: one prompt at 2 seeds, as an attack's stop oracle queries the model.

eraselab runs under the default policy (``Batching``: fixed shape, every request in its own row, padding rows
where a call has no request for a row) and with ``fixed_shape=False`` (calls of up to the batch size, no padding).
Also prints the wall time of the grid (the foundation issue's bar: <= 20 s on a 2-core CPU), the padding rows
the fixed policy ran, and how far each side's pixels are from plain diffusers'.

    python benchmarks/generation.py [--model tiny] [--batch-size 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import _quiet  # noqa: F401  (quiets the libraries before they load)
from eraselab.batching import Batching
from eraselab.generate import generate_images
from eraselab.models import load_pipeline
from eraselab.models.tiny.world import load_world
from eraselab.requests import GenerationRequest


def plain_diffusers(pipe, requests: list[GenerationRequest], batch_size: int) -> list:
    images = []
    for start in range(0, len(requests), batch_size):
        batch = requests[start:start + batch_size]
        output = pipe(prompt=[r.prompt for r in batch], negative_prompt=[r.negative_prompt for r in batch],
                      generator=[torch.Generator("cpu").manual_seed(r.seed) for r in batch],
                      num_inference_steps=batch[0].steps, guidance_scale=batch[0].guidance, output_type="pil")
        images.extend(output.images)
    return images


def padded_rows(batching: Batching, requests: list[GenerationRequest]) -> int:
    calls = list(batching.calls([batching.slot(r.prompt, r.seed) for r in requests]))
    return sum(row is None for call in calls for row in call)


def measure(pipe, requests: list[GenerationRequest], batch_size: int, repeats: int) -> dict:
    run = {
        "eraselab": lambda: generate_images(pipe, requests, Batching(batch_size), progress=False),
        "eraselab-unpadded": lambda: generate_images(pipe, requests, Batching(batch_size, fixed_shape=False),
                                                     progress=False),
        "diffusers": lambda: plain_diffusers(pipe, requests, batch_size),
    }
    for fn in run.values():  # warm-up: first calls pay for lazy initialisation
        fn()
    times: dict[str, list[float]] = {name: [] for name in run}
    outputs = {}
    for _ in range(repeats):
        for name, fn in run.items():
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    reference = [np.asarray(i).astype(np.int16) for i in outputs["diffusers"]]
    distance = {name: max(int(np.abs(np.asarray(a).astype(np.int16) - b).max())
                          for a, b in zip(images, reference, strict=True)) for name, images in outputs.items()}
    return {"median": median, "distance": distance}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    world = load_world()
    pipe = load_pipeline(args.model)
    prompts = [world.prompt(s, c) for s in range(len(world.shapes)) for c in range(len(world.colors))][:16]
    workloads = {
        "grid": [GenerationRequest(p, seed) for p in prompts for seed in range(4)],
        "lone": [GenerationRequest(prompts[0], 0)],
        "oracle": [GenerationRequest(prompts[0], seed) for seed in (1000, 1001)],
    }
    print(f"model={args.model} steps=25 batch={args.batch_size} threads={torch.get_num_threads()} "
          f"repeats={args.repeats}")
    for name, requests in workloads.items():
        result = measure(pipe, requests, args.batch_size, args.repeats)
        median, distance = result["median"], result["distance"]
        pad = padded_rows(Batching(args.batch_size), requests)
        print(f"\n{name}: {len(requests)} requests; the fixed policy ran {pad} padding rows "
              f"({len(requests) + pad} rows in all)")
        for side, seconds in median.items():
            print(f"  {side:18s} {len(requests) / seconds:7.2f} images/s ({seconds:.2f} s)   "
                  f"max pixel distance to diffusers: {distance[side]}/255")
        for side in ("eraselab", "eraselab-unpadded"):
            print(f"  ratio {side}/diffusers: {median['diffusers'] / median[side]:.3f}")


if __name__ == "__main__":
    main()
