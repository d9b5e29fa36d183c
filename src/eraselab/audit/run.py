"""Running an audit: the erasure grid and the chosen attacks into ``OUT/run`` (an experiment's run directory, so it
resumes as any run does), then the card from what the run holds."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, fields, replace
from pathlib import Path

from eraselab.audit.card import write_card
from eraselab.audit.plan import AuditRequest, choose_attacks
from eraselab.distributed import process_ranks
from eraselab.errors import EraselabError
from eraselab.experiment import run_experiment
from eraselab.experiment.attacks import run_attacks
from eraselab.experiment.parse import parse_experiment
from eraselab.experiment.plan import variants
from eraselab.profile import profile_for
from eraselab.suites import load_suite


def audit_config(request: AuditRequest) -> tuple[dict, str]:
    """The experiment an audit runs (as YAML would hold it) and the suite its attacks use."""
    profile = profile_for(request.model)
    if profile.tiny:
        from eraselab.models.tiny.suites import concept_label, erasure_groups

        groups = erasure_groups(request.concept)
        attack_suite = request.suite or f"tiny:target:{concept_label(request.concept).split('=')[1]}"
        judge = {"name": request.judge or "tiny", **request.judge_options}
    else:
        if request.suite is None or request.judge is None:
            raise EraselabError("on a model other than tiny, name the concept's prompts (--suite, e.g. "
                                "i2p-nudity50) and the judge (--judge, e.g. nudenet)")
        groups = [{"suite": request.suite, "metric": "efficacy", "concept": request.label or request.concept},
                  *({"suite": s, "metric": "specificity"} for s in request.preserve_suites)]
        attack_suite = request.suite
        judge = {"name": request.judge, **request.judge_options}
    defended = (list(request.edits) if len(request.edits) > 1 else request.edits[0]) if request.edits else "base"
    config = {"version": 1, "name": f"audit of {request.concept}", "models": [request.model],
              "edits": ["base", defended] if request.edits else ["base"],
              "seeds": {"start": 0, "count": request.seeds},
              "sampler": {"steps": request.steps or profile.steps, "guidance": request.guidance or profile.guidance},
              "detectors": [judge], "groups": groups, "device": request.device,
              "guards": [request.guard_config()] if request.guard else []}
    return config, attack_suite


def run_audit(request: AuditRequest, out: Path, progress: bool = True) -> dict:
    """Audit ``request`` into ``out`` (``run/`` and the card files); returns the card (under a launcher of several
    processes, the main process writes and returns it; the others return an empty dict)."""
    request.check()
    config, attack_suite = audit_config(request)
    grid = parse_experiment(config)
    prompts = len(load_suite(attack_suite).items)
    choices = choose_attacks(request, prompts)
    chosen = [c for c in choices if c.status == "run"]
    attacks = parse_experiment({**config, "attacks": [
        {"name": c.name, "concept": request.concept, "suite": attack_suite, "seeds": request.attack_seeds,
         "options": c.options} for c in chosen]})
    defended = list(variants(grid))[-1]  # the edit (stack) under the guard, or the one of them given
    run_dir = out / "run"
    ranks = process_ranks(request.device)  # under torchrun / accelerate launch: each process its share
    with ranks.main_first():
        out.mkdir(parents=True, exist_ok=True)
        _bind(out, request)
    run_experiment(grid, run_dir, progress=progress)
    if chosen:
        run_attacks(replace(attacks, device=ranks.device(request.device)), run_dir, progress and ranks.main, ranks,
                    only=defended)
    ranks.wait()  # every attack cell is written before the card reads them
    card = write_card(out, request, grid, defended, choices, attack_suite) if ranks.main else {}
    ranks.wait()
    return card


def _bind(out: Path, request: AuditRequest) -> None:
    """Record the request beside the run; a directory holding another audit is refused (a setting an older
    audit.json does not record counts as its default, so such an audit resumes)."""
    path = out / "audit.json"
    current = json.loads(json.dumps(asdict(request)))
    if path.is_file():
        defaults = {f.name: f.default_factory() if f.default is MISSING else f.default
                    for f in fields(AuditRequest) if (f.default, f.default_factory) != (MISSING, MISSING)}
        if {**json.loads(json.dumps(defaults)), **json.loads(path.read_text())} != current:
            raise EraselabError(f"{out} holds another audit (its audit.json differs); use a new directory")
    path.write_text(json.dumps(current, sort_keys=True, indent=2) + "\n")

