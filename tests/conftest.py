"""Shared fixtures: a micro tiny-world run trained for a few steps (real diffusers/transformers modules)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from eraselab.models.tiny.architecture import TinySizes
from eraselab.models.tiny.train import TrainSteps, train_tiny

MICRO_SIZES = TinySizes(vae_channels=(8, 16, 16), unet_channels=(16, 32), text_width=32, vision_width=32,
                        text_layers=1, vision_layers=1, projection=16, classifier_channels=(8, 16, 16), unet_heads=2)
MICRO_STEPS = TrainSteps(vae=3, clip=3, unet=3, classifier=3, vae_batch=4, clip_batch=8, unet_batch=4,
                         classifier_batch=4, latent_pool=32, checkpoint_every=2)


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete micro run directory (pipeline/, clip/, classifier/), trained uninterrupted."""
    out = tmp_path_factory.mktemp("micro-run")
    log = train_tiny(out, seed=0, sizes=MICRO_SIZES, steps=MICRO_STEPS)
    assert log["complete"]
    return out


@pytest.fixture(scope="session")
def micro_config() -> tuple[TinySizes, TrainSteps]:
    return MICRO_SIZES, MICRO_STEPS
