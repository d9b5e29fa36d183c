"""Load a Stable Diffusion pipeline from ``"tiny"``, a local diffusers directory, or a hub id.

>>> pipe = load_pipeline("tiny")
>>> type(pipe).__name__, pipe.unet.config.sample_size, pipe.vae_scale_factor
('StableDiffusionPipeline', 8, 4)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from eraselab.errors import EraselabError
from eraselab.models.tiny import tiny_path

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SUPPORTED = ("StableDiffusionPipeline",)  # SD 1.x / 2.x; SDXL, SD3 and FLUX are refused until supported


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float16"`` (or ``fp16``, ``bfloat16``/``bf16``, ``float32``/``fp32``) as a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise EraselabError(f"dtype must be one of float32, float16, bfloat16 (or fp32, fp16, bf16), got {name!r}")
    return DTYPES[name]


def _check_pipeline_class(path: Path) -> None:
    """Refuse a pipeline eraselab cannot edit yet, by the class its ``model_index.json`` names, before loading it
    (loaded as a StableDiffusionPipeline, an SDXL directory would silently drop its second text encoder)."""
    try:
        name = json.loads((path / "model_index.json").read_text()).get("_class_name", "StableDiffusionPipeline")
    except (OSError, json.JSONDecodeError, AttributeError) as error:
        raise EraselabError(f"{path / 'model_index.json'} is not readable ({error})") from None
    if name not in SUPPORTED:
        raise EraselabError(f"{path} holds a {name}; eraselab supports {', '.join(SUPPORTED)} (Stable Diffusion "
                            "1.x and 2.x) so far; SDXL, SD3 and FLUX are not supported yet")


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
                  dtype: torch.dtype | str = torch.float32) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` on ``device`` in ``dtype``; the safety checker is off, as in every erasure
    paper, because eraselab's judges measure what the model itself produces."""
    resolved = resolve_source(source)
    kwargs = {"dtype": parse_dtype(dtype), "safety_checker": None, "requires_safety_checker": False}
    if isinstance(resolved, Path):
        _check_pipeline_class(resolved)
        try:
            pipe = StableDiffusionPipeline.from_pretrained(resolved, local_files_only=True, **kwargs)
        except Exception as error:  # diffusers raises many kinds (missing weights, bad configs): one line each
            raise EraselabError(f"could not load the pipeline in {resolved}: {type(error).__name__}: "
                                f"{str(error).splitlines()[0] if str(error) else ''}") from None
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
    try:
        return pipe.to(device)
    except (RuntimeError, AssertionError) as error:  # "cuda" on a machine without one, an unknown device name
        raise EraselabError(f"cannot move the model to device {device!r}: {str(error).splitlines()[0]}") from None
