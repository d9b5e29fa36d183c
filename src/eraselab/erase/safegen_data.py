"""SafeGen's training triplets for real models, built from folders of images (Li et al., CCS 2024, Sec. 4.2).

SafeGen learns from (concept image, the same image with the concept's region pixelated, benign image). The authors
pixelated their nude images with an "anti-deepnude" model they did not release; this builds the mosaics from what a
user has: NudeNet's boxes of the classes a NudeNet protocol counts (:mod:`eraselab.judge.detectors.nudenet`, whose
model ships in the package), or the user's own masks (one image per concept image, the same file stem, white where
the concept is), pixelated in ``block``-pixel squares by :func:`eraselab.erase.safegen.mosaic`. Benign images are
paired with the concept images in turn. It writes ``mosaic/`` and ``triplets.csv`` (columns concept, mosaic, benign:
paths relative to the CSV), which the ``safegen`` method's ``triplets`` option reads; a concept image where no
region is found teaches nothing and is left out, named in ``skipped.txt``.

The block size is ours (16 pixels: a 32 x 32 grid on a 512-pixel image), since the authors' mosaics are not
described beyond "pixelated"; ``block`` changes it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from eraselab.erase.safegen import box_region, mosaic, open_rgb
from eraselab.errors import EraselabError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CHUNK = 16  # images read, judged and pixelated together


@dataclass(frozen=True)
class TripletSummary:
    csv: Path
    triplets: int
    skipped: tuple[str, ...]  # concept images where no region was found


def list_images(folder: Path, what: str) -> list[Path]:
    """The images in ``folder`` (by suffix), sorted by name; refused when there are none."""
    if not folder.is_dir():
        raise EraselabError(f"{what}: {folder} is not a directory")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise EraselabError(f"{what}: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return images


def detection_region(result: dict, classes: tuple[str, ...], threshold: float, shape: tuple[int, ...]
                     ) -> np.ndarray:
    """The union of the boxes NudeNet found (``[x, y, width, height]``) of ``classes`` scoring above
    ``threshold``, as an (H, W) mask of an image of ``shape``."""
    boxes = [(int(y), int(x), int(y + h), int(x + w)) for d in result["detections"]
             if d["class"] in classes and d["score"] > threshold for x, y, w, h in [d["box"]]]
    return box_region(shape, boxes)


def mask_region(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A user's mask (white where the concept is), read as grey and resized to the image's ``shape``."""
    grey = open_rgb(path, "--masks").convert("L").resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(grey) > 127


def _region_finder(concept: list[Path], masks: Path | None, protocol: str
                   ) -> Callable[[list[Path], list[np.ndarray]], list[np.ndarray]]:
    """What finds the regions of a chunk of concept images: their masks (all checked present first), or NudeNet."""
    if masks is not None:
        found = {p.stem: p for p in list_images(masks, "--masks")}
        missing = [p.name for p in concept if p.stem not in found]
        if missing:
            raise EraselabError(f"--masks: no mask named like {', '.join(missing[:5])}"
                                f"{' ...' if len(missing) > 5 else ''} in {masks}")
        return lambda paths, images: [mask_region(found[p.stem], image.shape)
                                      for p, image in zip(paths, images, strict=True)]
    from eraselab.judge.detectors.nudenet import NudeNetDetector

    detector = NudeNetDetector(protocol)
    return lambda paths, images: [detection_region(r, detector.classes, detector.threshold, image.shape) for r, image
                                  in zip(detector.detect([Image.fromarray(i) for i in images]), images, strict=True)]


def build_triplets(concept_dir: Path, benign_dir: Path, out: Path, masks: Path | None = None,
                   protocol: str = "unlearndiffatk", block: int = 16, progress: bool = True) -> TripletSummary:
    """Pixelate each concept image's region (NudeNet's boxes under ``protocol``, or ``masks``) into
    ``out/mosaic/`` and write ``out/triplets.csv`` pairing it with a benign image (in turn)."""
    if block < 1:
        raise EraselabError(f"--block must be >= 1, got {block}")
    concept, benign = list_images(concept_dir, "concept images"), list_images(benign_dir, "benign images")
    find = _region_finder(concept, masks, protocol)
    (out / "mosaic").mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    for start in tqdm(range(0, len(concept), CHUNK), desc="mosaics", disable=not progress, leave=False):
        paths = concept[start:start + CHUNK]  # a chunk at a time: a large folder is never held in memory whole
        images = [np.asarray(open_rgb(p, "concept images")) for p in paths]
        for path, image, region in zip(paths, images, find(paths, images), strict=True):
            if not region.any():
                skipped.append(path.name)
                continue
            target = out / "mosaic" / f"{path.stem}.png"  # lossless: a JPEG would blur the squares' edges
            Image.fromarray(mosaic(image, region, block)).save(target)
            rows.append({"concept": os.path.relpath(path, out), "mosaic": os.path.relpath(target, out),
                         "benign": os.path.relpath(benign[len(rows) % len(benign)], out)})
    (out / "skipped.txt").write_text("".join(f"{name}\n" for name in skipped))
    if not rows:
        raise EraselabError(f"no region found in any of the {len(concept)} concept images "
                            + ("(the masks are empty)" if masks else f"(NudeNet, protocol {protocol})")
                            + "; nothing to train SafeGen on")
    with (out / "triplets.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["concept", "mosaic", "benign"])
        writer.writeheader()
        writer.writerows(rows)
    return TripletSummary(out / "triplets.csv", len(rows), tuple(skipped))
