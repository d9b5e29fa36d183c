"""UCE: Unified Concept Editing in Diffusion Models (Gandikota, Orgad, Belinkov, Materzynska, Bau; WACV 2024).

Erasure edits the key and value projections of every cross-attention layer in closed form (Eq. 7 of the paper,
solved by :func:`eraselab.erase.closed_form.closed_form_edit`): the text-encoder outputs c_i of each target
prompt are mapped to the outputs the same layer gives the anchor prompt, v*_i = W0 c_anchor ("replace"), while
the outputs for preserved prompts stay W0 c_p.

Which token positions are keys is an option, because the two reference versions differ: ``word-to-eot`` (the
reference erasing script: from the concept's last word token through the [EoT] padding, aligned position by
position with the anchor's) or ``last-word`` (the concept's last word token only, as Eq. 7 is written).

Defaults are the reference script's for Stable Diffusion 1.4 (lamb 0.1, erase_scale 1, preserve_scale 0.1, keys
and values edited); the tiny model uses the same values.

>>> from eraselab.models import load_pipeline
>>> pipe = load_pipeline("tiny")
>>> edit = erase(pipe, EraseSpec(("star",)), UceConfig())
>>> edit.manifest["method"], len(edit.tensors)
('uce', 14)
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from eraselab.erase.artifact import Edit
from eraselab.erase.closed_form import closed_form_edit
from eraselab.erase.spec import EraseSpec
from eraselab.errors import EraselabError
from eraselab.generate import unknown_words
from eraselab.models import cross_attention_layers, pipeline_fingerprint


@dataclass(frozen=True)
class UceConfig:
    lamb: float = 0.1  # lambda of Eq. 7: how strongly W stays at W0
    erase_scale: float = 1.0
    preserve_scale: float = 0.1
    edit_keys: bool = True  # to_k as well as to_v
    positions: str = "word-to-eot"  # or "last-word"


def _encode(pipe, prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
    """(B, T, C) text-encoder outputs and, per prompt, the index of its last word token (0: none, the BOS)."""
    tokens = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = pipe.text_encoder(tokens.input_ids.to(pipe.text_encoder.device))[0].double()
    last = [int(mask.sum()) - 2 for mask in tokens.attention_mask]  # [BOS, words..., EOS]: last word at sum - 2
    return hidden, last


def _keys_and_anchor_rows(pipe, pairs: list[tuple[str, str]], positions: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys c_i (n, C) from the targets and the aligned anchor outputs (n, C) their values should take."""
    targets, anchors = _encode(pipe, [t for t, _ in pairs]), _encode(pipe, [a or " " for _, a in pairs])
    keys, anchor_rows = [], []
    length = targets[0].shape[1]
    for i in range(len(pairs)):
        t_last, a_last = targets[1][i], anchors[1][i]
        if positions == "last-word":
            keys.append(targets[0][i, t_last:t_last + 1])
            anchor_rows.append(anchors[0][i, a_last:a_last + 1])
        elif positions == "word-to-eot":
            span = length - max(t_last, a_last)  # align the two prompts' tails position by position
            keys.append(targets[0][i, t_last:t_last + span])
            anchor_rows.append(anchors[0][i, a_last:a_last + span])
        else:
            raise EraselabError(f"positions must be 'word-to-eot' or 'last-word', got {positions!r}")
    return torch.cat(keys), torch.cat(anchor_rows)


def erase(pipe, spec: EraseSpec, config: UceConfig) -> Edit:
    """An :class:`Edit` that erases ``spec.concepts`` from ``pipe`` (``pipe`` itself is not changed)."""
    start = time.perf_counter()
    # 1. Check the words and build the (target, anchor) prompt pairs.
    pairs = spec.pairs()
    unknown = unknown_words(pipe, [p for pair in pairs for p in pair] + spec.preserved())
    if unknown:
        raise EraselabError(f"words the model does not know: {', '.join(unknown)}")
    # 2. Encode: keys (n, C), the anchor outputs they map to (n, C), preserved keys (m, C).
    keys, anchor_rows = _keys_and_anchor_rows(pipe, pairs, config.positions)
    preserve = None
    if spec.preserve:
        hidden, _ = _encode(pipe, spec.preserved())
        preserve = hidden.reshape(-1, hidden.shape[-1])  # every position of every preserved prompt
    scale = math.sqrt(config.erase_scale)  # erase_scale multiplies sum v* c^T and sum c c^T
    # 3. Closed-form update (Eq. 7) of every projection, batched over layers of the same shape.
    projections = {}
    for layer in cross_attention_layers(pipe.unet):
        projections[f"unet.{layer.name}.to_v.weight"] = layer.to_v.weight
        if config.edit_keys:
            projections[f"unet.{layer.name}.to_k.weight"] = layer.to_k.weight
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, weight in projections.items():
        by_shape.setdefault(tuple(weight.shape), []).append(name)
    tensors = {}
    for names in by_shape.values():
        w0 = torch.stack([projections[n].detach().double() for n in names])  # (L, out, C)
        targets = w0 @ anchor_rows.T  # v*_i = W0 c_anchor_i, (L, out, n)
        edited = closed_form_edit(w0, scale * keys, scale * targets, preserve, config.preserve_scale,
                                  lamb=config.lamb)
        for name, weight in zip(names, edited, strict=True):
            tensors[name] = weight.to(projections[name].dtype).cpu()
    manifest = {"method": "uce", "config": asdict(config), "concepts": list(spec.concepts),
                "anchors": list(spec.anchors), "preserve": list(spec.preserve), "templates": list(spec.templates),
                "base_fingerprint": pipeline_fingerprint(pipe), "seed": None,  # closed form: nothing is random
                "seconds": round(time.perf_counter() - start, 3)}
    return Edit(tensors, manifest)


METHOD = (erase, UceConfig)
