"""Attack step of a run: every attack of the experiment against every variant of every model, scored by the
experiment's pinned judge (its first detector). A finished cell (summary.json) is skipped on resume; a cell whose
threat model the defence cannot offer is recorded as refused (refused.json), with the reason."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from eraselab.attack.runner import run_attack
from eraselab.distributed import Ranks
from eraselab.errors import EraselabError
from eraselab.experiment.config import AttackConfig, EditEntry, Experiment, GuardConfig
from eraselab.experiment.plan import edit_label, edit_parts, variant_id, variants
from eraselab.judge.detectors import make_detector
from eraselab.models import load_pipeline
from eraselab.profile import profile_for
from eraselab.store import stable_hash


def attack_cell(model: str, edit: EditEntry, guard: GuardConfig | None, attack: AttackConfig) -> str:
    """A stable, readable directory name for one (model, defence, attack) cell of the grid."""
    key = stable_hash([model, variant_id(edit, guard), attack.label, attack.concept, attack.suite, attack.seeds])
    return f"{attack.name}-{key[:12]}"


def run_attacks(experiment: Experiment, out: Path, progress: bool, ranks: Ranks | None = None,
                only: str | None = None) -> dict:
    """Run the attack cells not run yet (of this process's share, with ``ranks``; of the variant labelled
    ``only``, with it); returns how many were run, resumed and refused."""
    counts = {"run": 0, "resumed": 0, "refused": 0}
    cells = [(m, label, edit, guard, a) for m in experiment.models
             for label, (edit, guard) in variants(experiment).items() for a in experiment.attacks
             if (ranks is None or ranks.owns(attack_cell(m, edit, guard, a))) and only in (None, label)]
    judge = experiment.detectors[0]  # the experiment's pinned judge scores the attacks too
    loaded: dict[str, tuple] = {}
    unedited: dict[str, dict] = {}  # per model: the unedited rates, the same for every defence
    for model, _, edit, guard, attack in tqdm(cells, desc="attacks", disable=not progress):
        cell = out / "attacks" / attack_cell(model, edit, guard, attack)
        if (cell / "summary.json").is_file() or (cell / "refused.json").is_file():
            counts["resumed"] += 1
            continue
        if model not in loaded:
            loaded[model] = (load_pipeline(model, device=experiment.device, dtype=experiment.dtype),
                             make_detector(judge.name, **judge.options))
        defence = guard.build() if guard else None
        try:
            run_attack(attack.name, attack.settings(profile_for(model)), attack.concept, attack.suite, cell, model,
                       tuple(map(Path, edit_parts(edit))), defence, attack.seeds, judge=judge.name,
                       pipelines=loaded[model], display=attack.label, unedited=unedited.setdefault(model, {}),
                       steps=experiment.steps, guidance=experiment.guidance, device=experiment.device,
                       dtype=experiment.dtype)
            counts["run"] += 1
        except EraselabError as error:
            cell.mkdir(parents=True, exist_ok=True)
            record = {"attack": attack.name, "label": attack.label, "model": model,
                      "edit": edit_label(edit) if edit_parts(edit) else None,
                      "guard": defence.settings() if defence else None, "reason": str(error)}
            (cell / "refused.json").write_text(json.dumps(record, indent=2) + "\n")
            counts["refused"] += 1
    return counts
