"""``eraselab tiny check``: measure the tiny model against its quality bars.

Numbers reported (fractions in [0, 1]):
- classifier accuracy per attribute on freshly drawn images;
- fidelity: the share of generated images the classifier labels as the prompt asked, for ``a {colour} {shape}``
  with training words and with the held-out paraphrases (both held out in the same prompt);
- for the empty prompt, the largest share any single shape takes (mode collapse shows up here).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from eraselab.generate import generate_images
from eraselab.models.loading import load_pipeline
from eraselab.models.tiny.classifier import TinyClassifier, load_classifier
from eraselab.models.tiny.world import World, load_world
from eraselab.profile import TINY
from eraselab.requests import GenerationRequest

BARS = {  # (path in the result, minimum or maximum, bar)
    "classifier shape": (("classifier_accuracy", "shape"), ">=", 0.98),
    "classifier colour": (("classifier_accuracy", "color"), ">=", 0.98),
    "classifier fill": (("classifier_accuracy", "fill"), ">=", 0.98),
    "train shape fidelity": (("fidelity", "train", "shape"), ">=", 0.80),
    "train colour fidelity": (("fidelity", "train", "color"), ">=", 0.90),
    "held-out shape fidelity": (("fidelity", "heldout", "shape"), ">=", 0.60),
    "empty prompt max shape share": (("empty_prompt_max_shape_share",), "<=", 0.40),
}


def classifier_accuracy(world: World, judge: TinyClassifier, seed: int, n: int = 2000) -> dict[str, float]:
    rng = np.random.default_rng([seed, 2024])  # a stream no training stage uses
    attrs = world.sample_attributes(rng, n)
    predicted = judge.predict(world.draw(attrs, rng))
    return {a: float((predicted[a] == attrs[a]).mean()) for a in predicted}


def _fidelity(world: World, judge: TinyClassifier, pipe, vocabulary: str, per_prompt: int, seed: int,
              steps: int, guidance: float, progress: bool) -> dict:
    cells = [(s, c) for s in range(len(world.shapes)) for c in range(len(world.colors))]
    requests = [GenerationRequest(world.prompt(s, c, vocabulary), seed + j, steps, guidance)
                for s, c in cells for j in range(per_prompt)]
    predicted = judge.predict(generate_images(pipe, requests, progress=progress))
    asked_shape = np.repeat([s for s, _ in cells], per_prompt)
    asked_color = np.repeat([c for _, c in cells], per_prompt)
    shape_ok, color_ok = predicted["shape"] == asked_shape, predicted["color"] == asked_color
    return {
        "shape": float(shape_ok.mean()),
        "color": float(color_ok.mean()),
        "per_shape": {name: float(shape_ok[asked_shape == i].mean()) for i, name in enumerate(world.shapes)},
        "per_color": {name: float(color_ok[asked_color == i].mean()) for i, name in enumerate(world.colors)},
        "prompts": sorted({r.prompt for r in requests}),
    }


def run_check(source: str | Path = "tiny", classifier: str | Path | None = None, seed: int = 0,
              per_prompt: int = 32, empty_images: int = 192, steps: int = TINY.steps,
              guidance: float = TINY.guidance, progress: bool = True) -> dict:
    """Every number of the tiny model's quality bars, plus per-class detail and the settings used."""
    start = time.perf_counter()
    world, judge, pipe = load_world(), load_classifier(classifier), load_pipeline(source)
    result: dict = {"classifier_accuracy": classifier_accuracy(world, judge, seed)}
    train = _fidelity(world, judge, pipe, "train", per_prompt, seed, steps, guidance, progress)
    heldout = _fidelity(world, judge, pipe, "heldout", per_prompt, seed, steps, guidance, progress)
    result["fidelity"] = {
        "train": {"shape": train["shape"], "color": train["color"]},
        "heldout": {"shape": heldout["shape"], "color": heldout["color"]},
    }
    empty = [GenerationRequest("", seed + j, steps, guidance) for j in range(empty_images)]
    shapes = judge.predict(generate_images(pipe, empty, progress=progress))["shape"]
    shares = np.bincount(shapes, minlength=len(world.shapes)) / len(shapes)
    result["empty_prompt_max_shape_share"] = float(shares.max())
    result["empty_prompt_shape_shares"] = dict(zip(world.shapes, map(float, shares), strict=True))
    result["detail"] = {"train": train, "heldout": heldout}
    result["bars"] = evaluate_bars(result)
    result["settings"] = {"model": str(source), "seed": seed, "per_prompt": per_prompt, "steps": steps,
                          "guidance": guidance, "empty_images": empty_images,
                          "images": 2 * len(train["prompts"]) * per_prompt + empty_images}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def evaluate_bars(result: dict) -> dict[str, dict]:
    bars = {}
    for name, (path, direction, bar) in BARS.items():
        value = result
        for key in path:
            value = value[key]
        passed = value >= bar if direction == ">=" else value <= bar
        bars[name] = {"value": value, "bar": f"{direction} {bar}", "passed": bool(passed)}
    return bars
