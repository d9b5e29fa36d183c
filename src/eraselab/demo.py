"""``eraselab demo``: the whole flow as far as it exists, on the built-in tiny model.

Runs a small experiment through the harness (generate -> RunStore -> tiny detector -> metrics) around the
concept "star" and writes the report: how often the base model draws a star for its training words, for the
held-out paraphrase "pentagram", how faithfully it draws the neighbouring shapes and the unrelated attributes,
and how often the empty prompt gives a star. Erasure and attacks join this flow as they land.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from eraselab.experiment import run_experiment
from eraselab.experiment_config import parse_experiment
from eraselab.outputs import writable_directory
from eraselab.report import write_report


def demo_experiment(seeds: int = 8, seed: int = 0) -> dict:
    return {
        "version": 1,
        "name": "demo: the tiny model around 'star'",
        "models": ["tiny"],
        "edits": ["base"],
        "seeds": {"start": seed, "count": seeds},
        "sampler": {"steps": 25, "guidance": 5.0},
        "detectors": ["tiny"],
        "groups": [
            {"suite": "tiny:target:star", "metric": "efficacy", "concept": "shape=star"},
            {"suite": "tiny:heldout:star", "metric": "generality", "concept": "shape=star"},
            {"suite": "tiny:neighbour:star", "metric": "specificity"},
            {"suite": "tiny:unrelated:star", "metric": "specificity"},
            {"suite": "tiny:empty:star", "metric": "presence", "concept": "shape=star"},
        ],
    }


def run_demo(out: Path, seed: int = 0, seeds: int = 8, progress: bool = True) -> Path:
    """Run the demo experiment into ``out/run`` and return the report's path."""
    writable_directory(out)
    config = demo_experiment(seeds, seed)
    (out / "experiment.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run_experiment(parse_experiment(config), out / "run", progress=progress)
    report, _ = write_report(out / "run")
    return report
