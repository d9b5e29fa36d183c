"""Detector throughput: images per second for the tiny classifier and for NudeNet (CPU, batched).

    python benchmarks/judge.py [--images 2048]

The tiny detector judges 32x32 drawn images (bar: >= 500 images/s on this 2-core CPU); NudeNet judges the same
images upscaled to 256x256 (its ONNX model resizes every input to 320x320, so the input size barely matters).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

import _quiet  # noqa: F401  (quiets the libraries before they load)
from eraselab.judge.detectors import make_detector
from eraselab.models.tiny.world import load_world


def rate(detector, images, batch: int) -> float:
    detector.detect(images[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        detector.detect(images[i:i + batch])
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    args = parser.parse_args()
    world = load_world()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(a) for a in world.draw(world.sample_attributes(rng, args.images), rng)]
    print(f"threads={torch.get_num_threads()} images={args.images}")
    tiny = rate(make_detector("tiny"), images, batch=512)
    print(f"tiny     {tiny:8.1f} images/s  (bar >= 500)")
    big = [i.resize((256, 256), Image.Resampling.NEAREST) for i in images[:128]]
    nude = rate(make_detector("nudenet"), big, batch=16)
    print(f"nudenet  {nude:8.1f} images/s  (256x256 inputs, batch 16)")


if __name__ == "__main__":
    main()
