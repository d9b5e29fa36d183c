"""Generation step of a run: every image of this process's share the store does not hold yet, each edit applied in
turn and undone."""

from __future__ import annotations

from eraselab.erase.artifact import apply_edits
from eraselab.errors import EraselabError
from eraselab.experiment.context import Run
from eraselab.experiment.plan import edit_parts, plan, variants
from eraselab.generate import iter_generate
from eraselab.models import load_pipeline, pipeline_fingerprint
from eraselab.requests import GenerationRequest


def generate_missing(run: Run, known: dict[str, str]) -> tuple[dict[str, str], int]:
    """Generate every missing image of this process's share, each edit applied in turn and undone after; returns
    the model fingerprints (``known``: those the checks already computed, so a large model is not hashed twice) and
    how many images this process made."""
    experiment, store = run.experiment, run.store
    fingerprints: dict[str, str] = {}
    made = 0
    for model in experiment.models:
        pipe = load_pipeline(model, device=experiment.device, dtype=experiment.dtype)
        found = known.get(model) or pipeline_fingerprint(pipe)
        fingerprints[model] = store.set_meta_once(f"fingerprint:{model}", found)
        if fingerprints[model] != found:
            raise EraselabError(f"model {model!r} changed since this run started; start a new run directory")
        cells = plan(experiment, run.suites, {model: fingerprints[model]})
        for variant, (edit, guard) in variants(experiment).items():
            todo = {cell.key: spec for cell, spec in cells if cell.edit == variant and run.ranks.owns(cell.key)
                    and not store.has_image(cell.key)}
            if not todo:
                continue
            store.add_requests(list(todo.values()))
            requests = [GenerationRequest(s["prompt"], s["seed"], s["steps"], s["guidance"], s.get("height"),
                                          s.get("width")) for s in todo.values()]
            keys = list(todo)
            applied = apply_edits(pipe, edit_parts(edit)) if edit_parts(edit) else None
            try:
                for index, image in iter_generate(pipe, requests, experiment.batching, progress=run.progress,
                                                  guard=guard.build() if guard is not None else None):
                    store.put_image(keys[index], image)
                    made += 1
            finally:
                if applied is not None:
                    applied.undo()
    return fingerprints, made
