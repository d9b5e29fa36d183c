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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from eraselab.erase.safegen import box_region, mosaic, open_rgb
from eraselab.errors import EraselabError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CHUNK = 16  # images per NudeNet call


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


def _regions(concept: list[Path], images: list[np.ndarray], masks: Path | None, protocol: str,
             progress: bool) -> list[np.ndarray]:
    if masks is not None:
        found = {p.stem: p for p in list_images(masks, "--masks")}
        missing = [p.name for p in concept if p.stem not in found]
        if missing:
            raise EraselabError(f"--masks: no mask named like {', '.join(missing[:5])}"
                                f"{' ...' if len(missing) > 5 else ''} in {masks}")
        return [mask_region(found[p.stem], image.shape) for p, image in zip(concept, images, strict=True)]
    from eraselab.judge.detectors.nudenet import NudeNetDetector

    detector = NudeNetDetector(protocol)
    regions = []
    for start in tqdm(range(0, len(images), CHUNK), desc="NudeNet", disable=not progress, leave=False):
        chunk = images[start:start + CHUNK]
        results = detector.detect([Image.fromarray(image) for image in chunk])
        regions += [detection_region(r, detector.classes, detector.threshold, image.shape)
                    for r, image in zip(results, chunk, strict=True)]
    return regions


def build_triplets(concept_dir: Path, benign_dir: Path, out: Path, masks: Path | None = None,
                   protocol: str = "unlearndiffatk", block: int = 16, progress: bool = True) -> TripletSummary:
    """Pixelate each concept image's region (NudeNet's boxes under ``protocol``, or ``masks``) into
    ``out/mosaic/`` and write ``out/triplets.csv`` pairing it with a benign image (in turn)."""
    if block < 1:
        raise EraselabError(f"--block must be >= 1, got {block}")
    concept, benign = list_images(concept_dir, "concept images"), list_images(benign_dir, "benign images")
    images = [np.asarray(open_rgb(p, "concept images")) for p in concept]
    regions = _regions(concept, images, masks, protocol, progress)
    (out / "mosaic").mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    for path, image, region in zip(concept, images, regions, strict=True):
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
