"""Load the tiny world's attribute classifier (the judge that plays NudeNet's role for the tiny model).

>>> import numpy as np
>>> from eraselab.models.tiny.world import load_world
>>> world, judge = load_world(), load_classifier()
>>> rng = np.random.default_rng(0)
>>> attrs = world.sample_attributes(rng, 8)
>>> bool((judge.predict(world.draw(attrs, rng))["shape"] == attrs["shape"]).all())
True
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from eraselab.errors import EraselabError
from eraselab.models.tiny import tiny_path
from eraselab.models.tiny.architecture import AttributeClassifier


def images_to_tensor(images: np.ndarray | Sequence[Image.Image]) -> torch.Tensor:
    """uint8 (N, H, W, 3) array or PIL images -> (N, 3, H, W) float in [-1, 1], the models' input range."""
    array = images if isinstance(images, np.ndarray) else np.stack([np.asarray(i.convert("RGB")) for i in images])
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class TinyClassifier:
    """Wraps :class:`AttributeClassifier` with class names and image conversion."""

    def __init__(self, model: AttributeClassifier, classes: dict[str, list[str]]) -> None:
        self.model = model.eval()
        self.classes = classes

    @torch.no_grad()
    def probabilities(self, images: np.ndarray | Sequence[Image.Image], batch_size: int = 512) -> dict[str, np.ndarray]:
        """Per attribute, an (N, classes) array of probabilities."""
        tensor = images_to_tensor(images)
        chunks = [self.model(tensor[i:i + batch_size]) for i in range(0, len(tensor), batch_size)]
        return {a: torch.cat([c[a] for c in chunks]).softmax(-1).numpy() for a in self.model.heads}

    def predict(self, images: np.ndarray | Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """Per attribute, the (N,) predicted class indices."""
        return {a: p.argmax(-1) for a, p in self.probabilities(images).items()}

    def labels(self, images: np.ndarray | Sequence[Image.Image]) -> list[dict[str, str]]:
        """Per image, ``{attribute: class name}``."""
        predicted = self.predict(images)
        n = len(next(iter(predicted.values())))
        return [{a: self.classes[a][int(v[i])] for a, v in predicted.items()} for i in range(n)]


def load_classifier(path: str | Path | None = None) -> TinyClassifier:
    """The shipped classifier, or one saved by ``eraselab tiny train`` in ``path``."""
    directory = Path(path) if path is not None else tiny_path("classifier")
    config_file, weights = directory / "config.json", directory / "model.safetensors"
    if not (config_file.is_file() and weights.is_file()):
        raise EraselabError(f"{directory} holds no classifier (config.json and model.safetensors)")
    config = json.loads(config_file.read_text())
    model = AttributeClassifier(config["head_sizes"], tuple(config["channels"]))
    model.load_state_dict(load_file(weights))  # strict: every key present, with the right shape
    return TinyClassifier(model, config["classes"])
