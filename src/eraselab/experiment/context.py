"""The state every step of a run shares: what :func:`eraselab.experiment.run_experiment` built and checked before
the first image (the experiment, its store, suites and detectors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from eraselab.distributed import Ranks
from eraselab.experiment.config import Experiment
from eraselab.judge.detectors import Detector
from eraselab.store import RunStore
from eraselab.suites import PromptSuite


@dataclass
class Run:
    experiment: Experiment
    out: Path
    store: RunStore
    suites: list[PromptSuite]
    detectors: dict[str, Detector]  # by label (name and options)
    progress: bool = True
    ranks: Ranks = field(default_factory=Ranks)  # this process's share of the grid (all of it, alone)

    def fingerprint(self, model: str) -> str | None:
        """The fingerprint recorded for ``model`` when its first image was made (None before that)."""
        return self.store.meta(f"fingerprint:{model}")
