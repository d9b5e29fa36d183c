"""Judging step of a run: every stored image each detector has not judged yet, one committed detection each; an
image that cannot be read or judged is recorded as an error, never as a verdict."""

from __future__ import annotations

from tqdm.auto import tqdm

from eraselab.errors import EraselabError
from eraselab.judge.detectors import Detector, detect_safely
from eraselab.store import RunStore


def judge_missing(store: RunStore, detectors: dict[str, Detector], keys: list[str], progress: bool) -> int:
    """Judge the stored images of ``keys`` that a detector has not judged; returns how many verdicts it wrote."""
    images = dict(store.images())
    written = 0
    for label, detector in detectors.items():
        settings = detector.settings()
        todo = []
        for key in dict.fromkeys(keys):
            image_hash = images.get(key)
            if image_hash is None:
                continue
            try:
                store.detection(image_hash, detector.name, detector.version, settings)
            except KeyError:
                todo.append(image_hash)
        todo = list(dict.fromkeys(todo))
        bar = tqdm(total=len(todo), desc=f"judge {label}", unit="img", disable=not progress)
        for start in range(0, len(todo), 64):
            chunk = todo[start:start + 64]
            loaded, errors = [], {}
            for image_hash in chunk:
                try:
                    loaded.append(store.load_image(image_hash))
                except EraselabError as error:
                    loaded.append(None)
                    errors[image_hash] = str(error)
            for image_hash, (result, error) in zip(chunk, detect_safely(detector, loaded), strict=True):
                store.put_detection(image_hash, detector.name, detector.version, settings, result,
                                    errors.get(image_hash, error))
            bar.update(len(chunk))
            written += len(chunk)
        bar.close()
    return written
