"""Zero-shot concept presence with CLIP (Radford et al., 2021): the concept is present when its text prompt
is the most similar to the image among the concept and its alternatives (softmax over CLIP logits, Eq. in
the paper's Fig. 3).

The model is injected: a local path or hub id (loaded with ``transformers``), or a ready ``CLIPModel`` and
processor; nothing is downloaded when the detector is constructed with a local model. The tiny model ships a
tiny CLIP (``eraselab tiny path clip``), so the detector works offline on the tiny world.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

from eraselab.errors import EraselabError
from eraselab.models.fingerprint import module_fingerprint


class ClipEmbedder:
    """Unit-norm CLIP text and image features from a local path / hub id (``"tiny"``: the shipped tiny CLIP) or
    an injected model, tokenizer and image processor."""

    def __init__(self, model: str | Path | CLIPModel = "tiny", tokenizer: CLIPTokenizer | None = None,
                 processor: CLIPImageProcessor | None = None, device: str = "cpu") -> None:
        if isinstance(model, CLIPModel):
            self.model, self.tokenizer, self.processor, self.source = model, tokenizer, processor, "injected"
        else:
            if str(model) == "tiny":
                from eraselab.models.tiny import tiny_path

                model = tiny_path("clip")
            self.source = str(model)
            try:
                self.model = CLIPModel.from_pretrained(model)
                self.tokenizer = CLIPTokenizer.from_pretrained(model)
                self.processor = CLIPImageProcessor.from_pretrained(model)
            except OSError as error:
                raise EraselabError(f"could not load a CLIP model from {model!r} ({error.__class__.__name__}); "
                                    "pass a local directory") from None
        if self.tokenizer is None or self.processor is None:
            raise EraselabError("an injected CLIPModel needs its tokenizer and image processor too")
        self.model = self.model.eval().to(device)
        self.device = device
        self.version = module_fingerprint(self.model)[:12]

    @staticmethod
    def _unit(features) -> torch.Tensor:
        features = getattr(features, "pooler_output", features)  # transformers 5 returns a model output
        return features / features.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def text(self, texts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(texts), padding="max_length", truncation=True, return_tensors="pt").input_ids
        return self._unit(self.model.get_text_features(input_ids=ids.to(self.device)))

    @torch.no_grad()
    def images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=[i.convert("RGB") for i in images], return_tensors="pt").pixel_values
        return self._unit(self.model.get_image_features(pixel_values=pixels.to(self.device)))


class ClipDetector:
    name = "clip"

    def __init__(self, model: str | Path | CLIPModel = "tiny", tokenizer: CLIPTokenizer | None = None,
                 processor: CLIPImageProcessor | None = None, concepts: Sequence[str] = (), template: str = "{}",
                 device: str = "cpu") -> None:
        if len(concepts) < 2:
            raise EraselabError("the clip detector needs at least two concepts to choose between")
        self.embedder = ClipEmbedder(model, tokenizer, processor, device)
        self.concepts, self.template = list(concepts), template
        self.version = self.embedder.version
        self._text = self.embedder.text([template.format(c) for c in self.concepts])

    def settings(self) -> dict:
        return {"model": self.embedder.source, "concepts": self.concepts, "template": self.template}

    def features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, D) unit-norm CLIP image features."""
        return self.embedder.images(images)

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image]) -> list[dict]:
        features = self.embedder.images(images)
        logits = self.embedder.model.logit_scale.exp() * features @ self._text.T
        probabilities = logits.softmax(-1).cpu().numpy()
        return [{"probabilities": {c: round(float(p), 5) for c, p in zip(self.concepts, row, strict=True)}}
                for row in probabilities]

    def check_concept(self, concept: str) -> None:
        if concept not in self.concepts:
            known = ", ".join(self.concepts)
            raise EraselabError(f"{concept!r} is not one of this clip detector's concepts ({known})")

    def label_for(self, concept: str) -> str:
        return concept

    def confidence(self, result: dict, concept: str) -> float:
        self.check_concept(concept)
        return result["probabilities"][concept]

    def present(self, result: dict, concept: str) -> bool:
        self.check_concept(concept)
        scores = result["probabilities"]
        return max(scores, key=scores.get) == concept
