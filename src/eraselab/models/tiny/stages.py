"""The resumable optimisation loop the tiny model's four stages share: AdamW with warm-up and cosine decay, a
checkpoint of the model, the optimiser and any extra state (an EMA) every ``checkpoint_every`` steps, written
atomically and read back with ``torch.load(weights_only=True)``, and a step budget that pauses a run (to test
resumption). Every random draw of a stage comes from ``TrainRun.rng(stage, step)``, so a resumed run gives the
uninterrupted run's weights."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from eraselab.models.tiny.architecture import TinySizes
from eraselab.models.tiny.world import World

STAGES = ("vae", "clip", "unet", "classifier")


@dataclass(frozen=True)
class TrainSteps:
    """Optimisation steps and batch sizes per stage (the defaults are the shipped model's)."""

    vae: int = 1500
    clip: int = 1500
    unet: int = 4000
    classifier: int = 1500
    vae_batch: int = 64
    clip_batch: int = 256
    unet_batch: int = 128
    classifier_batch: int = 128
    latent_pool: int = 40_000
    checkpoint_every: int = 250


class Paused(Exception):
    """Raised inside a stage when this invocation's step budget is spent (after a checkpoint)."""


@dataclass
class TrainRun:
    """What every stage needs: the world, where to write, the seed, sizes, steps and the step budget."""

    world: World
    out: Path
    seed: int
    sizes: TinySizes
    steps: TrainSteps
    budget: int | None = None  # optimisation steps this invocation may still take (None: no limit)

    def rng(self, stage: str, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, STAGES.index(stage), step])


def warmup_cosine(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # a Python float: checkpoints stay
    # loadable with torch.load(weights_only=True), which refuses numpy scalars


class Stage:
    """A resumable optimisation loop: checkpoints the model, the optimiser and any extra state (an EMA)."""

    def __init__(self, run: TrainRun, name: str, model: torch.nn.Module, lr: float, total: int,
                 extra_state: dict | None = None) -> None:
        self.run_context, self.name, self.total, self.peak = run, name, total, lr
        self.path = run.out / "checkpoints" / f"{name}.pt"
        self.stateful = {"model": model, **(extra_state or {})}  # anything with state_dict/load_state_dict
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                           weight_decay=0.01)
        self.step = 0
        if self.path.exists():
            # Our own checkpoint, written below; weights_only=True refuses anything but tensors and containers.
            state = torch.load(self.path, weights_only=True)
            for key, item in self.stateful.items():
                item.load_state_dict(state[key])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state["step"])

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {key: item.state_dict() for key, item in self.stateful.items()}
        state |= {"optimizer": self.optimizer.state_dict(), "step": self.step}
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)  # atomic: a kill never leaves a half-written checkpoint

    def run(self, step_fn: Callable[[int], float], extra: Callable[[], None] | None = None) -> float:
        loss, run = float("nan"), self.run_context
        bar = tqdm(total=self.total, initial=self.step, desc=f"train {self.name}", unit="step", leave=False)
        while self.step < self.total:
            if run.budget is not None and run.budget <= 0:
                self.save()
                bar.close()
                raise Paused(self.name)
            for group in self.optimizer.param_groups:
                group["lr"] = warmup_cosine(self.step, self.total, self.peak)
            loss = step_fn(self.step)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if extra is not None:
                extra()
            self.step += 1
            if run.budget is not None:
                run.budget -= 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if self.step % run.steps.checkpoint_every == 0 or self.step == self.total:
                self.save()
        bar.close()
        return loss
