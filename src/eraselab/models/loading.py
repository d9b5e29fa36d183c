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
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from eraselab.errors import EraselabError
from eraselab.models.tiny import tiny_path

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# model_index.json's class -> the pipeline eraselab loads it as. SD3 and FLUX (a transformer with joint attention,
# no UNet cross-attention to edit) are refused until supported.
PIPELINES = {"StableDiffusionPipeline": StableDiffusionPipeline,  # SD 1.x and 2.x
             "StableDiffusionXLPipeline": StableDiffusionXLPipeline}
SUPPORTED_TEXT = "Stable Diffusion 1.x and 2.x (StableDiffusionPipeline) and SDXL (StableDiffusionXLPipeline)"


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float16"`` (or ``fp16``, ``bfloat16``/``bf16``, ``float32``/``fp32``) as a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise EraselabError(f"dtype must be one of float32, float16, bfloat16 (or fp32, fp16, bf16), got {name!r}")
    return DTYPES[name]


def pipeline_class(config: dict, where: str) -> type[DiffusionPipeline]:
    """The pipeline class for a ``model_index.json`` (read before loading: loaded as the wrong class, an SDXL
    directory would silently drop its second text encoder, an SD3 one fail inside diffusers)."""
    name = config.get("_class_name", "StableDiffusionPipeline") if isinstance(config, dict) else None
    if name not in PIPELINES:
        raise EraselabError(f"{where} holds a {name}; eraselab supports {SUPPORTED_TEXT} so far; SD3 and FLUX "
                            "(no UNet cross-attention) are not supported yet")
    return PIPELINES[name]


def _local_class(path: Path) -> type[DiffusionPipeline]:
    try:
        config = json.loads((path / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise EraselabError(f"{path / 'model_index.json'} is not readable ({error})") from None
    return pipeline_class(config, str(path))


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


def _pipeline_kwargs(cls: type[DiffusionPipeline], dtype: torch.dtype) -> dict:
    if cls is StableDiffusionXLPipeline:  # no safety checker; an invisible watermark would change the pixels
        return {"dtype": dtype, "add_watermarker": False}
    return {"dtype": dtype, "safety_checker": None, "requires_safety_checker": False}


def _hub_pipeline(repo: str, dtype: torch.dtype, local: bool) -> DiffusionPipeline:
    cls = pipeline_class(DiffusionPipeline.load_config(repo, local_files_only=local), repr(repo))
    return cls.from_pretrained(repo, local_files_only=local, **_pipeline_kwargs(cls, dtype))


def _from_hub(repo: str, dtype: torch.dtype) -> DiffusionPipeline:
    """The local hub cache first, then the hub itself when online."""
    try:
        return _hub_pipeline(repo, dtype, local=True)
    except EraselabError:
        raise
    except Exception:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise EraselabError(f"{repo!r} is not in the local hub cache and HF_HUB_OFFLINE is set; pass a local "
                                "diffusers directory instead") from None
    try:
        return _hub_pipeline(repo, dtype, local=False)
    except EraselabError:
        raise
    except Exception as error:  # diffusers and the hub client raise many kinds: one line each
        raise EraselabError(f"could not load {repo!r} from the hub ({type(error).__name__}); offline, pass a "
                            "local diffusers directory instead") from None


def load_pipeline(source: str | Path = "tiny", device: str | torch.device = "cpu",
                  dtype: torch.dtype | str = torch.float32) -> DiffusionPipeline:
    """A ``StableDiffusionPipeline`` (SD 1.x/2.x) or ``StableDiffusionXLPipeline``, as ``model_index.json`` names
    it, on ``device`` in ``dtype``; the safety checker and the SDXL watermark are off, as in every erasure paper,
    because eraselab's judges measure what the model itself produces."""
    resolved = resolve_source(source)
    dtype = parse_dtype(dtype)
    if isinstance(resolved, Path):
        cls = _local_class(resolved)
        try:
            pipe = cls.from_pretrained(resolved, local_files_only=True, **_pipeline_kwargs(cls, dtype))
        except Exception as error:  # diffusers raises many kinds (missing weights, bad configs): one line each
            raise EraselabError(f"could not load the pipeline in {resolved}: {type(error).__name__}: "
                                f"{str(error).splitlines()[0] if str(error) else ''}") from None
    else:
        pipe = _from_hub(resolved, dtype)
    pipe.set_progress_bar_config(disable=True)  # eraselab shows its own progress over whole request lists
    try:
        return pipe.to(device)
    except (RuntimeError, AssertionError) as error:  # "cuda" on a machine without one, an unknown device name
        raise EraselabError(f"cannot move the model to device {device!r}: {str(error).splitlines()[0]}") from None
