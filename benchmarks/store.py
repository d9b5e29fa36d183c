"""RunStore overhead per image (request insert + image write + lookup) against generation time per image.

    python benchmarks/store.py [--images 256]

Both are measured in this run on the tiny model at 25 steps; the ratio is the share of a run's time the store
costs (goal: under 1%).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import _quiet  # noqa: F401  (quiets the libraries before they load)
from eraselab.generate import generate_images
from eraselab.models import load_pipeline
from eraselab.requests import GenerationRequest
from eraselab.store import RunStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    pipe = load_pipeline("tiny")
    requests = [GenerationRequest("a red star", seed) for seed in range(64)]
    generate_images(pipe, requests[:8], progress=False)  # warm-up
    start = time.perf_counter()
    images = generate_images(pipe, requests, progress=False)
    generation = (time.perf_counter() - start) / len(images)

    with tempfile.TemporaryDirectory() as run_dir:
        store = RunStore(run_dir)
        specs = [{"model": "tiny", "prompt": "a red star", "seed": s, "steps": 25} for s in range(args.images)]
        start = time.perf_counter()
        for spec in specs:
            key = store.add_request(spec)
            if not store.has_image(key):
                store.put_image(key, images[spec["seed"] % len(images)])
        store_cost = (time.perf_counter() - start) / len(specs)
        store.close()
    print(f"generation {generation * 1000:8.2f} ms/image (tiny, 25 steps, batch 32)")
    print(f"store      {store_cost * 1000:8.3f} ms/image (insert + lookup + PNG write, one transaction each)")
    print(f"overhead   {store_cost / generation:8.2%} of generation time (goal < 1%)")


if __name__ == "__main__":
    main()
