"""The grid as a list of cells: every (model, variant, group, prompt, seed) and the request that makes its image.

A variant is an edit alone or under a guard; a request's key is the hash of everything that changes its image
(the model's fingerprint, the edit's content hash, the guard's settings, the sampler), so a cell is found in the
store whatever path its edit was read from.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from eraselab.errors import EraselabError
from eraselab.experiment.config import EditEntry, Experiment, GuardConfig
from eraselab.store import stable_hash
from eraselab.suites import PromptItem, PromptSuite


@dataclass(frozen=True)
class Cell:
    """One image of the grid: which model, edit, group and prompt item it serves, at which seed."""

    model: str
    edit: str
    group: int
    item: int
    seed: int
    key: str


def seeds_for(experiment: Experiment, item: PromptItem) -> tuple[int, ...]:
    if experiment.use_suite_seeds and item.seed is not None:
        return tuple(item.seed + offset for offset in experiment.seeds)
    return experiment.seeds


def edit_parts(edit: EditEntry) -> tuple[str, ...]:
    """The edit directories an entry of ``edits`` applies: none for ``base``, one, or a stack's in order."""
    if edit == "base":
        return ()
    return (edit,) if isinstance(edit, str) else tuple(edit)


def edit_label(edit: EditEntry) -> str:
    """How tables name an entry: ``base``, the edit's path, or a stack's paths joined by ``+``."""
    return edit if isinstance(edit, str) else "+".join(edit)


@functools.lru_cache(maxsize=64)
def edit_id(edit: EditEntry) -> str:
    """``base``, or the content hash an edit's manifest records (so a request key follows the edit's tensors,
    not the path it was read from); a stack's is its parts' joined by ``+``."""
    if edit == "base":
        return edit
    if not isinstance(edit, str):
        return "+".join(edit_id(part) for part in edit)
    manifest = Path(edit) / "manifest.json"
    if not manifest.is_file():
        raise EraselabError(f"edit {edit!r} is not an edit directory (no manifest.json); use 'base' or a path")
    return "edit:" + str(json.loads(manifest.read_text()).get("sha256", ""))[:16]


def variants(experiment: Experiment) -> dict[str, tuple[EditEntry, GuardConfig | None]]:
    """The grid's model variants by label: every edit alone, then under each guard (``base+sld-strong(star)``)."""
    out: dict[str, tuple[EditEntry, GuardConfig | None]] = {}
    for edit in experiment.edits:
        out[edit_label(edit)] = (edit, None)
        for guard in experiment.guards:
            out[f"{edit_label(edit)}+{guard.label}"] = (edit, guard)
    return out


def variant_id(edit: EditEntry, guard: GuardConfig | None) -> str:
    """The edit's content id, plus the hash of the guard's full settings when there is one."""
    if guard is None:
        return edit_id(edit)
    return f"{edit_id(edit)}+guard:{stable_hash(guard.build().settings())[:16]}"


def _request(experiment: Experiment, model: str, fingerprint: str, variant: str, item: PromptItem,
             seed: int) -> dict:
    guidance = item.guidance if experiment.use_suite_seeds and item.guidance is not None else experiment.guidance
    size = {k: v for k, v in (("height", experiment.height), ("width", experiment.width)) if v is not None}
    return {"model": model, "fingerprint": fingerprint, "edit": variant, "prompt": item.prompt,
            "seed": seed, "steps": experiment.steps, "guidance": guidance, "negative_prompt": "", **size}


def plan(experiment: Experiment, suites: list[PromptSuite], fingerprints: dict[str, str]) -> list[tuple[Cell, dict]]:
    """Every (cell, request spec) of the grid, for the models ``fingerprints`` names (in the experiment's order)."""
    cells = []
    edit_id.cache_clear()  # an edit directory may have been rewritten since the last plan
    for model in [m for m in experiment.models if m in fingerprints]:
        for variant, (edit, guard) in variants(experiment).items():
            identity = variant_id(edit, guard)  # once per variant, not per cell
            for g, suite in enumerate(suites):
                for i, item in enumerate(suite.items):
                    for seed in seeds_for(experiment, item):
                        spec = _request(experiment, model, fingerprints[model], identity, item, seed)
                        cells.append((Cell(model, variant, g, i, seed, stable_hash(spec)), spec))
    return cells
