"""RECE: Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models (Gong, Chen, Wei, Chen, Jiang;
ECCV 2024).

RECE starts from a UCE edit (Eq. 3 of the paper, :mod:`eraselab.erase.uce`) and then, for a set number of rounds:

1. derives in closed form the embedding c' that the *edited* cross-attention projections W_l still map to the
   concept's original keys and values W0_l c (Eq. 8, with the regulariser lambda_reg |c'|^2):
       c' = (sum_l W_l^T W_l + lambda_reg I)^-1 sum_l W_l^T W0_l c,
   summed over every edited projection (to_k and to_v of every cross-attention layer);
2. erases c' too: one more closed-form edit (Eq. 3) from the current weights, mapping c' to the anchor's outputs
   and keeping the preserved concepts.

Each round records how well its derived embeddings still recover the concept (the relative residual
sum_l |W_l c' - W0_l c|^2 / sum_l |W0_l c|^2, before that round's edit; the original keys' residual
sum_l |W_l c - W0_l c|^2 / ... beside it). A residual near 0 means the edited model can still be steered to the
concept by an embedding; RECE's rounds push it up.

c is every key row UCE edits (the concept's last word through the [EoT] padding, or the last word only: UCE's
``positions`` option), so c' lives at the same token positions.

Each round's edit is solved from the original weights with every embedding erased so far (the concept's keys and
each round's c'), which is the paper's sequence of edits without letting a later round's lambda-prior undo an
earlier one: edited sequentially from the current weights, the tiny model's concept keys drifted back towards the
original (their residual fell from 0.44 to 0.25 in 3 rounds, measured).

Defaults: the reference's published nudity run on Stable Diffusion 1.4 (UCE's lamb 0.1, erase_scale 1,
preserve_scale 0.1; lambda_reg 0.1; 3 rounds; its artist runs use lambda_reg 1e-3); the tiny model adds the tiny
caption corpus as preservation statistics (``tiny_overrides``). lambda_reg bounds the derived embeddings: on the
tiny model, erasing "star", their mean norm is 34 at 1e-3 and 6.5 at 0.1, against 11 for a real token's output,
and erasing them at 1e-3 also cost the heart 12.5 points of fidelity, at 0.1 2.8 points (72 images each).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from eraselab.erase.artifact import Edit
from eraselab.erase.cross_attention_edit import check_spec_words, manifest, projections, solve
from eraselab.erase.registry import MethodEntry
from eraselab.erase.spec import EraseSpec
from eraselab.erase.uce import UceConfig, concept_rows, preservation, resolved_preserve_scale
from eraselab.errors import EraselabError


@dataclass(frozen=True)
class ReceConfig(UceConfig):
    lamb: float = 0.1  # lambda_1 of Eq. 3 (the reference README: 0.1 for every concept)
    preserve_scale: float | None = 0.1  # lambda_2 of Eq. 3 (likewise 0.1)
    rounds: int = 3  # adversarial rounds after the UCE edit
    reg: float = 0.1  # lambda_reg of Eq. 8

    defaults_from: ClassVar[str] = ("RECE README and scripts/, CharlesGong12/RECE: lambda_1 = lambda_2 = 0.1; nudity: "
                                    "regular_scale 0.1, 3 epochs")

    # Without preservation statistics, erasing the derived embeddings on the tiny model also erased the other
    # shapes (fidelity 0.99 -> 0.50, measured), so tiny preserves its caption corpus.
    tiny_overrides: ClassVar[dict] = {"corpus": "tiny", "corpus_scale": 0.1}


def recovered_embeddings(original: dict[str, torch.Tensor], edited: dict[str, torch.Tensor], keys: torch.Tensor,
                         reg: float) -> torch.Tensor:
    """c' = (sum_l W_l^T W_l + reg I)^-1 sum_l W_l^T W0_l c for every row c of ``keys`` (n, C) (Eq. 8), in float64
    where the weights are (on the CPU for Apple's MPS, which has no float64), returned where the keys are. One call
    for all rows: the sums over the layers are the cost (at SDXL size, 140 projections 2048 wide)."""
    d, device = keys.shape[-1], next(iter(edited.values())).device
    if device.type == "mps":
        device = torch.device("cpu")
    gram = reg * torch.eye(d, dtype=torch.float64, device=device)
    cross = torch.zeros(d, d, dtype=torch.float64, device=device)
    for name, w in edited.items():
        w, w0 = w.to(device, torch.float64), original[name].to(device, torch.float64)
        gram += w.T @ w  # sum_l W_l^T W_l + lambda_reg I
        cross += w.T @ w0  # sum_l W_l^T W0_l
    return torch.linalg.solve(gram, cross @ keys.to(device, torch.float64).T).T.to(keys.device)  # (n, C)


def residual(original: dict[str, torch.Tensor], edited: dict[str, torch.Tensor], inputs: torch.Tensor,
             keys: torch.Tensor) -> float:
    """sum_l |W_l x - W0_l c|^2 / sum_l |W0_l c|^2 over the rows x of ``inputs`` and c of ``keys``."""
    error = reference = 0.0
    for name, w in edited.items():
        w0 = original[name].double()
        goal = keys.double() @ w0.T
        error += float(((inputs.double() @ w.double().T - goal) ** 2).sum())
        reference += float((goal ** 2).sum())
    return error / reference


def erase(pipe, spec: EraseSpec, config: ReceConfig) -> Edit:
    """UCE, then ``config.rounds`` rounds of erasing the embeddings that still recover the concept."""
    if config.rounds < 0:
        raise EraselabError(f"rounds must be 0 or more, got {config.rounds}")
    start = time.perf_counter()
    config.check()
    pairs = check_spec_words(pipe, spec)
    keys, anchor_rows = concept_rows(pipe, spec, pairs, config.positions)
    preserve, stats = preservation(pipe, spec, config.corpus)
    weights = projections(pipe, config.edit_keys)
    original = {name: w.double().cpu() for name, w in weights.items()}

    preserve_scale = resolved_preserve_scale(config, spec)

    def edit(rows: torch.Tensor) -> dict[str, torch.Tensor]:  # Eq. 3, from the original weights
        return solve(original, rows, anchor_rows.repeat(len(rows) // len(keys), 1), preserve, preserve_scale,
                     stats, config.corpus_scale, config.lamb, config.erase_scale)

    erased = keys
    current = edit(erased)  # the UCE edit
    history = []
    for round_ in range(1, config.rounds + 1):
        adversarial = recovered_embeddings(original, current, keys, config.reg)  # Eq. 8
        history.append({"round": round_, "recovered_residual": residual(original, current, adversarial, keys),
                        "concept_residual": residual(original, current, keys, keys)})
        erased = torch.cat([erased, adversarial])
        current = edit(erased)
    final = recovered_embeddings(original, current, keys, config.reg)
    history.append({"round": config.rounds + 1, "recovered_residual": residual(original, current, final, keys),
                    "concept_residual": residual(original, current, keys, keys), "final": True})
    tensors = {name: w.to(weights[name].dtype) for name, w in current.items()}
    return Edit(tensors, manifest("rece", config, spec, pipe, start, rounds=history,
                                  resolved={"preserve_scale": preserve_scale}))


METHOD = MethodEntry(erase, ReceConfig)
