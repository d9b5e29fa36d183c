"""One attack on one defence, end to end: the unedited rate, the attack, and the pinned judge before and after.

``eraselab attack`` and the experiment runner's ``attacks:`` axis both call :func:`run_attack`; it writes the
attack's result and ``summary.json`` (written last, atomically, so a present summary means a finished cell).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from eraselab.errors import EraselabError


def threat_model(attack_name: str) -> str:
    from eraselab.attack import ATTACKS

    attack_fn, _ = ATTACKS.get(attack_name)
    return importlib.import_module(attack_fn.__module__).THREAT_MODEL


def default_label(concept: str, judge_name: str) -> str:
    """What the judge looks for when an attack brings ``concept`` back: the tiny class it names ("pentagram" ->
    "shape=star") for the tiny judge, "nudity" for NudeNet, the concept itself for others."""
    if judge_name == "tiny":
        from eraselab.models.tiny.suites import concept_label

        return concept_label(concept)
    return "nudity" if judge_name == "nudenet" else concept


def check_access(attack_name: str, edit: Path | None, defence) -> None:
    """Refuse an attack whose threat model the defence cannot offer (before any model is loaded)."""
    if threat_model(attack_name) == "white-box-weights" and edit is None:
        what = f"the guard {defence.label} changes no weights" if defence else "no edit was given"
        raise EraselabError(f"{attack_name} needs white-box access to an edit's weights, and {what}")


def run_attack(attack_name: str, settings, concept: str, suite: str, out: Path, model: str = "tiny",
               edit: Path | None = None, defence=None, seeds: int = 4, judge: str | None = None,
               label: str | None = None, device: str = "cpu", pipelines: tuple | None = None,
               display: str | None = None, unedited: dict | None = None) -> dict:
    """Attack ``model`` (+ ``edit``, under ``defence``) and score it; returns the summary record.

    ``pipelines`` may pass a loaded (reference, judge) pair to reuse across a grid; ``display`` is the attack's
    label in tables (default: its name); ``unedited`` is a memo of the unedited model's rates, kept by a caller
    that attacks the same model and prompts many times."""
    from eraselab.attack import ATTACKS
    from eraselab.attack.base import AttackSpec, Replay, check_budget
    from eraselab.attack.evaluate import evaluate, presence, summary
    from eraselab.judge.detectors import make_detector
    from eraselab.models import load_pipeline
    from eraselab.outputs import writable_directory
    from eraselab.suites import load_suite

    attack_fn, _ = ATTACKS.get(attack_name)
    check_access(attack_name, edit, defence)
    if seeds < 1:
        raise EraselabError(f"--seeds must be at least 1, got {seeds}")
    if hasattr(settings, "budget"):
        check_budget(settings.budget)  # before any model is loaded
    writable_directory(out)
    from eraselab.erase.artifact import Edit, apply_edit

    loaded_edit = Edit.load(edit) if edit is not None else None  # a bad or altered edit fails before any model
    is_tiny = model == "tiny"
    judge_name = judge or ("tiny" if is_tiny else "nudenet")
    if label is None:
        label = default_label(concept, judge_name)
    final_judge = pipelines[1] if pipelines else make_detector(judge_name)
    final_judge.check_concept(label)  # an unknown label must not score as "absent"
    prompts = tuple(item.prompt for item in load_suite(suite).items)
    spec = AttackSpec(concept, prompts, steps=25 if is_tiny else 50, guidance=5.0 if is_tiny else 7.5, guard=defence)
    reference = pipelines[0] if pipelines else load_pipeline(model, device=device)
    # 1. Could the unedited model draw the concept at all? If not, there is nothing to bring back.
    memo = unedited if unedited is not None else {}
    key = (suite, seeds, label)
    if key not in memo:
        memo[key] = presence(reference, [Replay(p) for p in prompts], range(seeds), spec.steps, spec.guidance,
                             final_judge, label, attacked=False)
    base_rate = memo[key]
    if not base_rate["value"]:
        raise EraselabError(f"the unedited model never shows {label} for these prompts (pre-attack rate 0 at "
                            f"{seeds} seeds): there is nothing to bring back; stopping")
    # 2. The defended model, the attack, and the pinned judge on fresh images before and after.
    target = load_pipeline(model, device=device)
    if loaded_edit is not None:
        apply_edit(target, loaded_edit)
    result = attack_fn(target, spec, settings, reference_pipe=reference)
    scores = evaluate(target, result, range(seeds), spec.steps, spec.guidance, final_judge, label, defence)
    result.save(out)
    record = summary(result, scores, concept=concept, suite=suite, edit=str(edit) if edit else None,
                     guard=defence.settings() if defence else None, unedited=base_rate,
                     judge={"detector": judge_name, "label": label, "version": final_judge.version})
    record["label"] = display or attack_name
    record["config"] = result.config
    staging = out / ".summary.json.partial"
    staging.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(staging, out / "summary.json")
    return record
