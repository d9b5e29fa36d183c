"""Attacks on erased models: each one file, registered by name in :data:`ATTACKS` (``attack(target_pipe, spec,
config, reference_pipe=None) -> AttackResult``), each stating its threat model.

An :class:`~eraselab.attack.base.AttackResult` is data the generator replays exactly (typed prompts, prompt
embeddings in safetensors, or a composition recipe), with its cost in UNet and text-encoder evaluations.
"""

from __future__ import annotations

from eraselab.registry import Registry

ATTACKS: Registry[object] = Registry("attack")
ATTACKS.register_lazy("embedding-recovery", "eraselab.attack.embedding_recovery:ATTACK")
ATTACKS.register_lazy("concept-vector", "eraselab.attack.concept_vector:ATTACK")
ATTACKS.register_lazy("concept-arithmetic", "eraselab.attack.concept_arithmetic:ATTACK")
ATTACKS.register_lazy("unlearndiff", "eraselab.attack.unlearndiff:ATTACK")
ATTACKS.register_lazy("p4d", "eraselab.attack.p4d:ATTACK")
ATTACKS.register_lazy("textual-inversion", "eraselab.attack.textual_inversion:ATTACK")
