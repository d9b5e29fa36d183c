"""Concept vector: Ring-A-Bell (Tsai, Hsu, Xie, Lin, Chen, Li, Chen, Yu, Huang; ICLR 2024), Sec. 3.2.

Threat model: text encoder only; the edited UNet is a black box. The concept vector is the mean difference of
full text-encoder outputs over prompt pairs with and without the concept,
    v = (1/N) sum_i [E(p_i with c) - E(p_i without c)]                                     (Eq. 3)
and the attack conditions on E(p) + eta v (Eq. 4), replayed as prompt embeddings. No UNet evaluation.
(The paper's genetic search for a typeable prompt near E(p) + eta v lands with its own change.)

Defaults: eta = 3.0 (the paper's for nudity); pairs from templates with the concept and with the anchor in its
place (for the tiny model the world's prompt forms, "a red star" / "a red shape").
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from eraselab.attack.base import AttackResult, AttackSpec, Cost, Replay
from eraselab.erase.cross_attention_edit import encode
from eraselab.errors import EraselabError
from eraselab.generate import unknown_words

THREAT_MODEL = "text-encoder"
GENERIC_TEMPLATES = ("{}", "a photo of {}", "a painting of {}", "an image of {}", "a picture of {}")


@dataclass(frozen=True)
class ConceptVectorConfig:
    strength: float = 3.0  # eta of Eq. 4
    anchor: str = ""  # what replaces the concept in the "without" prompts
    templates: tuple[str, ...] = ()  # empty: the tiny world's forms on the tiny model, GENERIC_TEMPLATES otherwise


def concept_vector(pipe, concept: str, anchor: str, templates: tuple[str, ...]):
    """v of Eq. 3, (T, C) float64, and the number of prompt pairs it averages."""
    pairs = [(" ".join(t.format(concept).split()), " ".join(t.format(anchor).split())) for t in templates]
    unknown = unknown_words(pipe, [p for pair in pairs for p in pair])
    if unknown:
        raise EraselabError(f"concept-vector prompts have words outside the model's vocabulary: {', '.join(unknown)}")
    with_concept = encode(pipe, [w for w, _ in pairs]).hidden
    without = encode(pipe, [w for _, w in pairs]).hidden
    return (with_concept - without).mean(0), len(pairs)  # Eq. 3


def attack(target_pipe, spec: AttackSpec, config: ConceptVectorConfig, reference_pipe=None) -> AttackResult:
    start = time.perf_counter()
    templates = config.templates
    if not templates:
        closed = target_pipe.tokenizer.init_kwargs.get("closed_vocabulary", False)
        if closed:
            from eraselab.models.tiny.world import load_world

            templates = load_world().erase_templates(spec.concept)
        else:
            templates = GENERIC_TEMPLATES
    vector, n_pairs = concept_vector(target_pipe, spec.concept, config.anchor, tuple(templates))
    hidden = encode(target_pipe, list(spec.prompts)).hidden
    replays = [Replay(p, embeddings=(rows + config.strength * vector)[None].float())  # Eq. 4
               for p, rows in zip(spec.prompts, hidden, strict=True)]
    cost = Cost(text_encoder_evals=2 * n_pairs + len(spec.prompts), seconds=round(time.perf_counter() - start, 4))
    return AttackResult("concept-vector", THREAT_MODEL, {**asdict(config), "templates": list(templates)}, replays,
                        cost, details={"pairs": n_pairs, "vector_norm": float(vector.norm())})


ATTACK = (attack, ConceptVectorConfig)
