"""One attack on one defence, end to end: the unedited rate, the attack, and the pinned judge before and after.

``eraselab attack`` and the experiment runner's ``attacks:`` axis both call :func:`run_attack`; it writes the
attack's result and ``summary.json`` (written last, atomically, so a present summary means a finished cell).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from eraselab.errors import EraselabError
from eraselab.profile import profile_for


def check_access(attack_name: str, edits: Sequence[Path], defence) -> None:
    """Refuse an attack whose threat model the defence cannot offer (before any model is loaded)."""
    from eraselab.attack import ATTACKS

    if ATTACKS.get(attack_name).threat_model == "white-box-weights" and not edits:
        what = f"the guard {defence.label} changes no weights" if defence else "no edit was given"
        raise EraselabError(f"{attack_name} needs white-box access to an edit's weights, and {what}")


def run_attack(attack_name: str, settings, concept: str, suite: str, out: Path, model: str = "tiny",
               edits: Sequence[Path] = (), defence=None, seeds: int = 4, judge: str | None = None,
               label: str | None = None, device: str = "cpu", pipelines: tuple | None = None,
               display: str | None = None, unedited: dict | None = None, steps: int | None = None,
               guidance: float | None = None, dtype: str = "float32") -> dict:
    """Attack ``model`` (+ ``edits``, a stack applied together, under ``defence``) and score it; returns the
    summary record.

    ``steps``, ``guidance`` and ``judge`` default to the model's profile (:mod:`eraselab.profile`); ``label`` (what
    the judge looks for) to the judge's reading of ``concept``.
    ``pipelines`` may pass a loaded (reference, judge) pair to reuse across a grid; ``display`` is the attack's
    label in tables (default: its name); ``unedited`` is a memo of the unedited model's rates, kept by a caller
    that attacks the same model and prompts many times. An attack that needs no unedited model runs on one
    pipeline: the edit is applied to it after the unedited rate is measured, and undone at the end."""
    from eraselab.attack import ATTACKS
    from eraselab.attack.base import AttackSpec, Replay, check_budget
    from eraselab.attack.evaluate import evaluate, presence, summary
    from eraselab.judge.detectors import make_detector
    from eraselab.models import load_pipeline
    from eraselab.outputs import writable_directory
    from eraselab.suites import load_suite

    entry = ATTACKS.get(attack_name)
    check_access(attack_name, edits, defence)
    if seeds < 1:
        raise EraselabError(f"--seeds must be at least 1, got {seeds}")
    profile = profile_for(model)
    steps = steps if steps is not None else profile.steps
    guidance = guidance if guidance is not None else profile.guidance
    if steps < 1:
        raise EraselabError(f"--steps must be at least 1, got {steps}")
    if hasattr(settings, "budget"):
        check_budget(settings.budget)  # before any model is loaded
    writable_directory(out)
    from eraselab.erase.artifact import Edit, apply_edits, check_stack
    from eraselab.erase.cross_attention_edit import projections

    loaded_edits = [Edit.load(edit) for edit in edits]  # a bad or altered edit fails before any model
    check_stack(loaded_edits)
    judge_name = judge or profile.judge
    final_judge = pipelines[1] if pipelines else make_detector(judge_name)
    if label is None:
        label = final_judge.label_for(concept)
    final_judge.check_concept(label)  # an unknown label must not score as "absent"
    prompts = tuple(item.prompt for item in load_suite(suite).items)
    spec = AttackSpec(concept, prompts, steps=steps, guidance=guidance, guard=defence)
    reference = pipelines[0] if pipelines else load_pipeline(model, device=device, dtype=dtype)
    # 1. Could the unedited model draw the concept at all? If not, there is nothing to bring back.
    memo = unedited if unedited is not None else {}
    key = (suite, seeds, label, steps, guidance)
    if key not in memo:
        memo[key] = presence(reference, [Replay(p) for p in prompts], range(seeds), spec.steps, spec.guidance,
                             final_judge, label, attacked=False)
    base_rate = memo[key]
    if not base_rate["value"]:
        raise EraselabError(f"the unedited model never shows {label} for these prompts (pre-attack rate 0 at "
                            f"{seeds} seeds): there is nothing to bring back; stopping")
    # 2. The defended model, the attack, and the pinned judge on fresh images before and after.
    reads = entry.reads
    two = reads == "model"
    target = load_pipeline(model, device=device, dtype=dtype) if two else reference
    kwargs = {"reference_pipe": reference} if two else {}
    if reads == "projections":  # copies: applying the edit writes into the parameters
        kwargs["reference_projections"] = {name: w.clone() for name, w in projections(target).items()}
    applied = apply_edits(target, loaded_edits) if loaded_edits else None
    try:
        result = entry.attack(target, spec, settings, **kwargs)
        scores = evaluate(target, result, range(seeds), spec.steps, spec.guidance, final_judge, label, defence)
    finally:
        if applied is not None and not two:
            applied.undo()  # the one pipeline is the caller's unedited model again
    result.save(out)
    record = summary(result, scores, concept=concept, suite=suite, edit="+".join(map(str, edits)) or None,
                     guard=defence.settings() if defence else None, unedited=base_rate,
                     judge={"detector": judge_name, "label": label, "version": final_judge.version})
    record["label"] = display or attack_name
    record["space"] = entry.space_of(settings)  # where it optimises: what a defence must intercept
    record["edit_components"] = sorted({name.split(".")[0] for edit in loaded_edits for name in edit.tensors})
    record["sampler"] = {"steps": steps, "guidance": guidance}
    record["config"] = result.config
    staging = out / ".summary.json.partial"
    staging.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(staging, out / "summary.json")
    return record
