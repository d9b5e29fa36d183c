"""What the tiny judge reads in SafeGen's training targets: the erased class's images from the tiny world, pixelated
over the shape's bounding box at each mosaic block size (``mosaic_block``), judged by the table's classifier.

    python benchmarks/safegen_targets.py [--concept star] [--images 240] [--blocks 4 8 12 16 32]

SafeGen (Eq. 1's first term) teaches the model to turn a concept image into its mosaic, so the share of mosaics still
judged as the concept is the presence a perfectly trained edit would leave on the training distribution: the floor
under the erasure table's efficacy cell for that block size.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch
from PIL import Image

import _quiet  # noqa: F401  (quiets the libraries before they load)
from eraselab.erase.safegen import TinyTriplets
from eraselab.judge.detectors import make_detector
from eraselab.judge.stats import wilson_interval
from eraselab.models.tiny.suites import concept_label
from erasure_table import TARGETS  # the erasure table's targets (this directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", choices=sorted(TARGETS), default="star")
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 8, 12, 16, 32])
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the classifier's reading is then the same on any CPU
    judge = make_detector("tiny")
    attribute, value = concept_label(args.concept).split("=")
    print(f"| block | {args.concept} judged in the mosaic [95% CI] | the judge's {attribute} classes |")
    print("|---|---|---|")
    for block in args.blocks:  # the same images at every block size: one seed
        concept, mosaics, _ = TinyTriplets(args.concept, block).draw(np.random.default_rng(args.seed), args.images, 0)
        if block == args.blocks[0]:
            clean = Counter(d[attribute] for d in judge.detect([Image.fromarray(c) for c in concept]))
            print(f"| none (the concept images) | {clean[value] / len(concept):.3f} | {dict(clean.most_common())} |")
        read = Counter(d[attribute] for d in judge.detect([Image.fromarray(m) for m in mosaics]))
        low, high = wilson_interval(read[value], len(mosaics))
        print(f"| {block} | {read[value] / len(mosaics):.3f} [{low:.3f}, {high:.3f}] | {dict(read.most_common())} |")


if __name__ == "__main__":
    main()
