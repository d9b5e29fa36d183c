"""What the closed-form methods (UCE, RECE, TRCE stage 1) share: the cross-attention key and value projections
they edit, the batched solve over them, and the manifest of the result.

The solver itself is :func:`eraselab.erase.closed_form.closed_form_edit`; this module feeds it every projection of
the same shape as one batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import torch

from eraselab.erase.closed_form import closed_form_edit
from eraselab.erase.spec import EraseSpec
from eraselab.errors import EraselabError
from eraselab.models import cross_attention_layers, pipeline_fingerprint
from eraselab.models.vocabulary import require_known_words


def check_spec_words(pipe, spec: EraseSpec) -> list[tuple[str, str]]:
    """The spec's (target, anchor) prompt pairs, after refusing words the model has no token for."""
    pairs = spec.pairs()
    require_known_words(pipe, [p for pair in pairs for p in pair] + spec.preserved(), "words the model does not know")
    return pairs


def projections(pipe, edit_keys: bool = True) -> dict[str, torch.Tensor]:
    """Every cross-attention value projection (and key projection with ``edit_keys``), by edit tensor name."""
    found = {}
    for layer in cross_attention_layers(pipe.unet):
        found[f"unet.{layer.name}.to_v.weight"] = layer.to_v.weight.detach()
        if edit_keys:
            found[f"unet.{layer.name}.to_k.weight"] = layer.to_k.weight.detach()
    if not found:
        raise EraselabError("this UNet has no cross-attention layers to edit")
    return found


def by_shape(weights: dict[str, torch.Tensor]) -> list[list[str]]:
    """Names of ``weights`` grouped by tensor shape (each group is one batched solve)."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, weight in weights.items():
        groups.setdefault(tuple(weight.shape), []).append(name)
    return list(groups.values())


def solve(weights: dict[str, torch.Tensor], keys: torch.Tensor, anchor_rows: torch.Tensor,
          preserve: torch.Tensor | None = None, preserve_scale: float = 0.0, corpus: torch.Tensor | None = None,
          corpus_scale: float = 0.0, lamb: float = 0.1, erase_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Edit every projection in ``weights`` (the prior W0 of the closed form) so that ``keys`` (n, C) give what
    the prior gives ``anchor_rows`` (n, C), v*_i = W0 c_anchor_i, keeping ``preserve`` (m, C) and the ``corpus``
    statistics (C, C) where they were. Returns new weights by name, in each weight's dtype, on the CPU."""
    scale = math.sqrt(erase_scale)  # erase_scale multiplies both sum v* c^T and sum c c^T
    edited = {}
    for names in by_shape(weights):
        w0 = torch.stack([weights[n].cpu() for n in names]).double()  # (L, out, C); one float64 copy, not two
        targets = w0 @ anchor_rows.double().T  # v*_i = W0 c_anchor_i, (L, out, n)
        new = closed_form_edit(w0, scale * keys.double(), scale * targets, preserve, preserve_scale,
                               corpus, corpus_scale, lamb=lamb)
        for name, weight in zip(names, new, strict=True):
            edited[name] = weight.to(weights[name].dtype)
    return edited


def manifest(method: str, config, spec: EraseSpec, pipe, start: float, **extra) -> dict:
    return {"method": method, "config": asdict(config), "defaults_from": getattr(config, "defaults_from", None),
            "concepts": list(spec.concepts),
            "anchors": list(spec.anchors), "preserve": list(spec.preserve), "templates": list(spec.templates),
            "base_fingerprint": pipeline_fingerprint(pipe), "seed": None,  # closed form: nothing is random
            "seconds": round(time.perf_counter() - start, 3), **extra}
