"""Load a Stable Diffusion pipeline from ``"tiny"``, a local diffusers directory, or a hub id.

>>> pipe = load_pipeline("tiny")
>>> type(pipe).__name__, pipe.unet.config.sample_size, pipe.vae_scale_factor
('StableDiffusionPipeline', 8, 4)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from eraselab.errors import EraselabError
from eraselab.models.tiny import tiny_path

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve_source(source: str | Path) -> Path | str:
    """``"tiny"`` -> the shipped directory; an existing directory -> itself; ``org/name`` -> the hub id."""
    if str(source) == "tiny":
        return tiny_path("pipeline")
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise EraselabError(f"{path} is not a diffusers pipeline directory (no model_index.json)")
        return path
    if path.exists():
        raise EraselabError(f"{path} is a file; pass a diffusers pipeline directory")
    if _HUB_ID.match(str(source)) and not str(source).startswith((".", "/", "~")):
        return str(source)
    raise EraselabError(f"model directory {source} does not exist")


def load_pipeline(source: str | Path = "tiny", device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` on ``device``; the safety checker is off, as in every erasure paper,
    because eraselab's judges measure what the model itself produces."""
    resolved = resolve_source(source)
    kwargs = {"dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    if isinstance(resolved, Path):
        pipe = StableDiffusionPipeline.from_pretrained(resolved, local_files_only=True, **kwargs)
    else:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        try:  # the local hub cache first, then the hub itself when online
            pipe = StableDiffusionPipeline.from_pretrained(resolved, local_files_only=True, **kwargs)
        except Exception:
            if offline:
                raise EraselabError(f"{resolved!r} is not in the local hub cache and HF_HUB_OFFLINE is set; "
                                    "pass a local diffusers directory instead") from None
            try:
                pipe = StableDiffusionPipeline.from_pretrained(resolved, **kwargs)
            except Exception as error:
                raise EraselabError(f"could not load {resolved!r} from the hub ({type(error).__name__}); "
                                    "offline, pass a local diffusers directory instead") from None
    pipe.set_progress_bar_config(disable=True)  # eraselab shows its own progress over whole request lists
    return pipe.to(device)
