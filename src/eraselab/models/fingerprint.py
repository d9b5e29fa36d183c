"""A stable fingerprint of a model's weights, recorded by every artifact made from it.

The digest covers each tensor's name, shape and values cast to float16, so the same weights give the same
fingerprint in float32 or float16 and on any device, and any change to a value changes it.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

PIPELINE_PARTS = ("unet", "text_encoder", "text_encoder_2", "vae")  # text_encoder_2: SDXL only


def module_fingerprint(module: nn.Module) -> str:
    """sha256 hex digest of ``module``'s state dict (names sorted)."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu", torch.float16).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes; reshape: 0-dim too
    return digest.hexdigest()


def pipeline_fingerprint(pipe, parts: tuple[str, ...] = PIPELINE_PARTS) -> str:
    """Fingerprint of a diffusers pipeline: the digests of its weight-bearing parts, hashed together."""
    digest = hashlib.sha256()
    for part in parts:
        module = getattr(pipe, part, None)
        if module is not None:
            digest.update(f"{part}={module_fingerprint(module)};".encode())
    return digest.hexdigest()[:16]
