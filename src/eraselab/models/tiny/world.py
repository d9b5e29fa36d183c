"""The tiny world: images of shapes drawn by code, and captions about them.

Every image shows one shape with a colour, a fill style and a background; captions are drawn from the
templates in ``world.json`` with a paraphrase for each word. The world plays the role the LAION images play
for Stable Diffusion, small enough to train a text-to-image model on a laptop CPU.

>>> import numpy as np
>>> world = load_world()
>>> rng = np.random.default_rng(0)
>>> attrs = world.sample_attributes(rng, 4)
>>> world.draw(attrs, rng).shape
(4, 32, 32, 3)
>>> world.caption(world.attributes_of(attrs, 0), rng, vocabulary="train")  # doctest: +SKIP
'a crimson striped heart'
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
from PIL import Image, ImageDraw

from eraselab.text import with_article

ATTRIBUTES = ("shape", "color", "fill", "background")
SUPERSAMPLE = 4  # draw at 4x and downsample with a box filter: anti-aliased edges at 32x32
_WORD = re.compile(r"[a-z]+|[^\sa-z]")  # the words CLIP's pre-tokeniser sees in our lowercase world


@dataclass(frozen=True)
class Caption:
    """A caption and the attributes it names (an attribute it leaves out is ``None``)."""

    text: str
    named: dict[str, int | None]

    def matches(self, attributes: dict[str, int]) -> bool:
        return all(v is None or attributes[k] == v for k, v in self.named.items())


def split_words(text: str) -> list[str]:
    """The words of ``text`` as CLIP's pre-tokeniser splits them (``five-pointed`` -> five, -, pointed)."""
    return _WORD.findall(text.lower())


def _polygon(shape: str, n_circle: int = 48) -> np.ndarray:
    """The outline of ``shape`` as (N, 2) points in a unit box centred on 0 (y down)."""
    if shape == "circle":
        t = np.linspace(0, 2 * math.pi, n_circle, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.85
    if shape == "triangle":
        t = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        return np.stack([np.cos(t), np.sin(t) + 0.2], 1) * 1.1
    if shape == "star":
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.05, 0.42)
        return np.stack([r * np.cos(t), r * np.sin(t) + 0.08], 1)
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return np.stack([x, -y - 2.5], 1) / 16.5
    if shape == "cross":
        a = 0.34
        return np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]]
        )
    raise ValueError(f"unknown shape {shape!r}")


class World:
    """Vocabulary, templates and the drawing code of the tiny world (see ``world.json``)."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.version: int = spec["version"]
        self.image_size: int = spec["image_size"]
        self.shapes: list[str] = list(spec["shapes"])
        self.colors: list[str] = list(spec["colors"])
        self.fills: list[str] = list(spec["fills"])
        self.backgrounds: list[str] = list(spec["backgrounds"])
        self.templates: list[str] = spec["templates"]
        self.classes = {"shape": self.shapes, "color": self.colors, "fill": self.fills, "background": self.backgrounds}
        self._table = {"shape": "shapes", "color": "colors", "fill": "fills", "background": "backgrounds"}
        self._polygons = {s: _polygon(s) for s in self.shapes}

    # -- words -------------------------------------------------------------------------------------------
    def words_for(self, attribute: str, index: int, vocabulary: str = "train") -> list[str]:
        """Phrases that name class ``index`` of ``attribute``: ``train``, ``heldout`` or ``all`` of them."""
        entry = self.spec[self._table[attribute]][self.classes[attribute][index]]
        train, heldout = list(entry["train"]), [entry["heldout"]] if "heldout" in entry else []
        return {"train": train, "heldout": heldout or train, "all": train + heldout}[vocabulary]

    def canonical(self, attribute: str, index: int) -> str:
        return self.words_for(attribute, index)[0]

    def siblings(self, attribute: str, name: str) -> list[str]:
        """The canonical words of every class of ``attribute`` but ``name`` (the star's: circle, square, ...)."""
        return [self.canonical(attribute, i) for i, other in enumerate(self.classes[attribute]) if other != name]

    def heldout(self, attribute: str, index: int) -> str:
        return self.words_for(attribute, index, "heldout")[0]

    @property
    def vocabulary(self) -> list[str]:
        """Every word a tiny-world prompt may use, sorted."""
        words = set(self.spec["extra_words"])
        for template in self.templates:
            words.update(split_words(re.sub(r"\{\w+\}", " ", template)))
        for attribute, names in self.classes.items():
            for i in range(len(names)):
                for phrase in self.words_for(attribute, i, "all"):
                    words.update(split_words(phrase))
        return sorted(words)

    # -- sampling ------------------------------------------------------------------------------------------
    def sample_attributes(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """``n`` uniformly drawn attribute tuples, as one int array per attribute."""
        return {a: rng.integers(0, len(self.classes[a]), n) for a in ATTRIBUTES}

    @staticmethod
    def attributes_of(attrs: dict[str, np.ndarray], i: int) -> dict[str, int]:
        return {a: int(v[i]) for a, v in attrs.items()}

    def caption(self, attributes: dict[str, int], rng: np.random.Generator, vocabulary: str = "train") -> Caption:
        """A random caption of an image with ``attributes``, naming each attribute with a random paraphrase."""
        template = self.templates[rng.integers(len(self.templates))]
        named: dict[str, int | None] = {a: None for a in ATTRIBUTES}
        values = {}
        for attribute in ATTRIBUTES:
            if "{" + attribute + "}" in template:
                named[attribute] = attributes[attribute]
                options = self.words_for(attribute, attributes[attribute], vocabulary)
                values[attribute] = options[rng.integers(len(options))]
        text = template.format(**values)
        return Caption(with_article(text), named)

    def prompt(self, shape: int | None = None, color: int | None = None, vocabulary: str = "train") -> str:
        """The evaluation prompt ``a {color} {shape}`` with canonical (or held-out) words."""
        pick = self.canonical if vocabulary == "train" else self.heldout
        words = [pick("color", color)] if color is not None else []
        words.append(pick("shape", shape) if shape is not None else "shape")
        return with_article("a " + " ".join(words))

    def erase_templates(self, concept: str) -> tuple[str, ...]:
        """Prompt forms to expand a concept with when erasing it from the tiny model (as the UCE reference expands
        objects with "image of {}", ...): the bare word, "a {}", and the concept beside every value of the
        attribute it is drawn with, in the word orders of the world's captions: "a red {}" for a shape; "a {} star"
        and "a star in {}" for a colour; "a {} star" and "a {} red shape" for a fill (the form its evaluation
        prompts take). A fine-tuning method (ESD) learns from these prompts only, so a word order it never sees is
        one it does not erase: with the colour after the shape only, ESD left red in 0.21 of "a red star"
        prompts. ``concept`` is a class name or any of its words ("outline", "outlined")."""
        attribute = next((a for a in ("color", "fill") for i, name in enumerate(self.classes[a])
                          if concept == name or concept in self.words_for(a, i, "all")), "shape")
        shapes = [self.canonical("shape", s) for s in range(len(self.shapes))]
        colours = [self.canonical("color", c) for c in range(len(self.colors))]
        if attribute == "shape":
            crossed = [f"a {colour} {{}}" for colour in colours]
        elif attribute == "color":
            crossed = [f"a {{}} {shape}" for shape in shapes] + [f"a {shape} in {{}}" for shape in shapes]
        else:
            crossed = [f"a {{}} {shape}" for shape in shapes] + [f"a {{}} {colour} shape" for colour in colours]
        return tuple(with_article(form) for form in ["{}", "a {}", *crossed])

    # -- drawing -------------------------------------------------------------------------------------------
    def draw_one(self, attributes: dict[str, int], rng: np.random.Generator) -> np.ndarray:
        """One (H, W, 3) uint8 image; position, size, rotation and exact colour vary with ``rng``."""
        size = self.image_size * SUPERSAMPLE
        gray = self.spec["backgrounds"][self.backgrounds[attributes["background"]]]["gray"]
        gray = int(np.clip(gray + rng.integers(-8, 9), 0, 255))
        rgb = np.array(self.spec["colors"][self.colors[attributes["color"]]]["rgb"])
        rgb = tuple(int(c) for c in np.clip(rgb + rng.integers(-12, 13, 3), 0, 255))

        scale = size * rng.uniform(0.30, 0.40)  # half-width of the shape
        centre = size / 2 + rng.uniform(-0.08, 0.08, 2) * size
        angle = rng.uniform(-0.2, 0.2)
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        points = self._polygons[self.shapes[attributes["shape"]]] @ rotation.T * scale + centre
        points = [tuple(p) for p in points]

        image = Image.new("RGB", (size, size), (gray, gray, gray))
        fill = self.fills[attributes["fill"]]
        width = int(SUPERSAMPLE * 2.2)
        if fill == "solid":
            ImageDraw.Draw(image).polygon(points, fill=rgb)
        else:
            mask = Image.new("L", (size, size), 0)
            draw = ImageDraw.Draw(mask)
            if fill == "striped":
                inside = Image.new("L", (size, size), 0)
                ImageDraw.Draw(inside).polygon(points, fill=255)
                period, phase = 4 * SUPERSAMPLE, rng.integers(0, 4 * SUPERSAMPLE)
                yy, xx = np.mgrid[0:size, 0:size]
                stripes = ((xx + yy + phase) % period) < period / 2  # diagonal stripes, 4 px period
                mask = Image.fromarray(np.where(stripes, np.asarray(inside), 0).astype(np.uint8))
                draw = ImageDraw.Draw(mask)
            draw.polygon(points, outline=255, width=width)
            image.paste(Image.new("RGB", (size, size), rgb), (0, 0), mask)
        image = image.resize((self.image_size, self.image_size), Image.Resampling.BOX)
        return np.asarray(image)

    def draw(self, attrs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """A (N, H, W, 3) uint8 batch, one image per attribute tuple in ``attrs``."""
        n = len(attrs["shape"])
        return np.stack([self.draw_one(self.attributes_of(attrs, i), rng) for i in range(n)])


@lru_cache(maxsize=1)
def load_world() -> World:
    """The world described by the packaged ``world.json``."""
    text = resources.files("eraselab.models.tiny").joinpath("world.json").read_text()
    return World(json.loads(text))
