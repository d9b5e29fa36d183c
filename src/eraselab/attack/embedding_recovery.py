"""Embedding recovery: RECE's closed form (Gong et al., ECCV 2024, Eq. 8) turned into an attack on
cross-attention edits.

Threat model: white-box weights. The attacker reads the edited model's key/value projections W_l and the
unedited reference model's W0_l and, for every token row c of the attacked prompt's embedding, solves
    c' = (sum_l W_l^T W_l + lambda I)^-1 sum_l W_l^T W0_l c
for the embedding the edited model maps to what the original model made of c, then generates from c' as
prompt embeddings. One text-encoder pass per prompt and a (C x C) solve; no UNet evaluation. It finds nothing
to undo in an edit that left cross-attention alone (ESD-u) or in a guard (no weights change): it says so.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from eraselab.attack.base import AttackEntry, AttackResult, AttackSpec, Cost, Replay
from eraselab.erase.cross_attention_edit import projections
from eraselab.erase.rece import recovered_embeddings
from eraselab.errors import EraselabError
from eraselab.models.conditioning import encode

THREAT_MODEL = "white-box-weights"


@dataclass(frozen=True)
class EmbeddingRecoveryConfig:
    reg: float = 1e-3  # lambda of Eq. 8 (as in RECE's artist runs on SD 1.4: the attack wants the closest fit)


def attack(target_pipe, spec: AttackSpec, config: EmbeddingRecoveryConfig, reference_pipe=None,
           reference_projections: dict[str, torch.Tensor] | None = None) -> AttackResult:
    """Recover ``spec.prompts``' embeddings from ``target_pipe``'s edited projections and the unedited ones: those
    of ``reference_pipe`` or, without it, ``reference_projections`` (by edit tensor name, as
    :func:`~eraselab.erase.cross_attention_edit.projections` names them)."""
    start = time.perf_counter()
    if reference_projections is None:
        if reference_pipe is None:
            raise EraselabError("embedding-recovery is a white-box attack: it needs the unedited model's "
                                "cross-attention projections besides the edited model")
        reference_projections = projections(reference_pipe)
    edited, original = projections(target_pipe), reference_projections
    if set(edited) != set(original):
        raise EraselabError("the edited and reference models have different cross-attention layers")
    changed = [n for n in edited if not torch.equal(edited[n], original[n])]
    if not changed:
        raise EraselabError("the target's cross-attention key/value weights equal the reference's: there is no "
                            "cross-attention edit to invert (a guard or an edit elsewhere in the UNet)")
    hidden = encode(target_pipe, list(spec.prompts)).hidden  # (B, T, C)
    recovered = recovered_embeddings(original, edited, hidden.flatten(0, 1), config.reg)  # Eq. 8, every token row
    replays = [Replay(prompt, embeddings=rows[None].float())
               for prompt, rows in zip(spec.prompts, recovered.view_as(hidden), strict=True)]
    cost = Cost(text_encoder_evals=len(spec.prompts), seconds=round(time.perf_counter() - start, 4))
    return AttackResult("embedding-recovery", THREAT_MODEL, asdict(config), replays, cost,
                        details={"changed_projections": len(changed)})


# Only the unedited cross-attention projections: the runner keeps them from before it applies the edit, so one
# pipeline is loaded (at SD-1.4 size its k/v projections are 20 M parameters, the pipeline 1.07 G).
def evaluations(config: EmbeddingRecoveryConfig, prompts: int, steps: int) -> tuple[int, int]:
    """Exactly one encoding a prompt; the solve uses no model evaluation."""
    return 0, prompts


ATTACK = AttackEntry(attack, EmbeddingRecoveryConfig, THREAT_MODEL, reads="projections", space="conditioning",
                     evaluations=evaluations)
