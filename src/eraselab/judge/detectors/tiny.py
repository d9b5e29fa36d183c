"""The tiny world's judge: the attribute classifier shipped beside the tiny model (its NudeNet).

>>> from PIL import Image
>>> detector = TinyDetector()
>>> result = detector.detect([Image.new("RGB", (32, 32), (235, 235, 235))])[0]
>>> sorted(result)
['background', 'color', 'fill', 'probabilities', 'shape']
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from eraselab.errors import EraselabError
from eraselab.models.fingerprint import module_fingerprint
from eraselab.models.tiny.classifier import images_to_tensor, load_classifier
from eraselab.models.tiny.suites import concept_label


class TinyDetector:
    name = "tiny"

    def __init__(self, classifier: str | Path | None = None) -> None:
        self.judge = load_classifier(classifier)
        self.classifier = str(classifier) if classifier is not None else "shipped"
        self.version = module_fingerprint(self.judge.model)[:12]  # the weights are the version

    def settings(self) -> dict:
        return {"classifier": self.classifier, "decision": "argmax per attribute"}

    def detect(self, images: Sequence[Image.Image]) -> list[dict]:
        probabilities = self.judge.probabilities(list(images))
        results = []
        for i in range(len(images)):
            result: dict = {"probabilities": {}}
            for attribute, p in probabilities.items():
                names = self.judge.classes[attribute]
                result[attribute] = names[int(p[i].argmax())]
                result["probabilities"][attribute] = {n: round(float(v), 5) for n, v in zip(names, p[i], strict=True)}
            results.append(result)
        return results

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, C) penultimate features of the classifier: the feature space of locality and FID/KID on tiny."""
        return self.judge.model.embed(images_to_tensor(list(images)))

    def _parse(self, concept: str) -> tuple[str, str]:
        """``concept`` is ``attribute=class`` (``shape=star``) or a bare class name (``star``)."""
        classes = self.judge.classes
        if "=" in concept:
            attribute, value = concept.split("=", 1)
            if attribute not in classes:
                raise EraselabError(f"the tiny classifier has no {attribute!r} head (heads: {', '.join(classes)})")
            if value not in classes[attribute]:
                raise EraselabError(f"{value!r} is not a tiny-world {attribute} (the classifier knows: "
                                    f"{', '.join(classes[attribute])})")
            return attribute, value
        matches = [a for a, names in classes.items() if concept in names]
        if not matches:
            known = "; ".join(f"{a}: {', '.join(names)}" for a, names in classes.items())
            raise EraselabError(f"{concept!r} is not a tiny-world class ({known})")
        return matches[0], concept

    def check_concept(self, concept: str) -> None:
        self._parse(concept)

    def label_for(self, concept: str) -> str:
        return concept_label(concept)

    def confidence(self, result: dict, concept: str) -> float:
        attribute, value = self._parse(concept)
        return result["probabilities"][attribute][value]

    def present(self, result: dict, concept: str) -> bool:
        attribute, value = self._parse(concept)
        return result[attribute] == value
