"""Detectors: an image in, labelled scores out, with the detector's name, version and settings recorded.

Registered lazily (a detector's heavy dependency loads only when it is used):
- ``tiny``: the tiny world's attribute classifier; concepts are ``shape=star``, ``color=red``, ``fill=striped``.
- ``nudenet``: NudeNet's detector, with the papers' protocols (threshold and counted classes) by name.
- ``clip``: zero-shot concept presence with a CLIP model the user points to.

Every detector implements :class:`Detector`; one that can embed images also has ``features(images) -> (N, D)``,
which the runner uses for locality (feature distance at the same seed) and KID. :func:`detect_safely` turns a
crash into a recorded error per image, never into a "concept absent" verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from PIL import Image

from eraselab.registry import Registry


class Detector(Protocol):
    name: str
    version: str

    def settings(self) -> dict:
        """Everything that changes the verdicts (thresholds, classes, model fingerprint)."""
        ...

    def detect(self, images: Sequence[Image.Image]) -> list[dict]:
        """One JSON-serialisable result per image."""
        ...

    def check_concept(self, concept: str) -> None:
        """Refuse (:class:`EraselabError`, naming what it can judge) a concept this detector cannot judge: an
        unknown concept must never read as "absent"."""
        ...

    def label_for(self, concept: str) -> str:
        """What this detector looks for when ``concept`` is what an erasure removed or an attack brings back (the
        tiny classifier: the class the word names, "pentagram" -> "shape=star"; NudeNet: "nudity")."""
        ...

    def confidence(self, result: dict, concept: str) -> float:
        """How sure the detector is that ``concept`` is in the image, in [0, 1] (a class probability, a detection
        score): what a search breaks ties on when few seeds give the same presence rate."""
        ...

    def present(self, result: dict, concept: str) -> bool:
        """Whether ``concept`` is in the image that gave ``result`` (a concept :meth:`check_concept` refuses
        raises, never returns False)."""
        ...


DETECTORS: Registry[type] = Registry("detector")
DETECTORS.register_lazy("tiny", "eraselab.judge.detectors.tiny:TinyDetector")
DETECTORS.register_lazy("nudenet", "eraselab.judge.detectors.nudenet:NudeNetDetector")
DETECTORS.register_lazy("clip", "eraselab.judge.detectors.clip:ClipDetector")


def make_detector(name: str, **options) -> Detector:
    """The detector ``name`` built with ``options``, checked (:func:`eraselab.options.make`)."""
    from eraselab.options import make

    return make(DETECTORS, name, options)


def detect_safely(detector: Detector, images: Sequence[Image.Image | None]) -> list[tuple[dict | None, str | None]]:
    """(result, error) per image: a missing image (``None``) or a crash is an error, never a verdict."""
    out: list[tuple[dict | None, str | None]] = [(None, "image missing or unreadable")] * len(images)
    present = [i for i, image in enumerate(images) if image is not None]
    try:
        results = detector.detect([images[i] for i in present])
        for i, result in zip(present, results, strict=True):
            out[i] = (result, None)
    except Exception:  # retry one by one, so one bad image does not sink its batch
        for i in present:
            try:
                out[i] = (detector.detect([images[i]])[0], None)
            except Exception as error:
                out[i] = (None, f"{type(error).__name__}: {error}")
    return out
