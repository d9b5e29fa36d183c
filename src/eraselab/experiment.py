"""The experiment runner: a grid of models x edits x prompt groups x seeds -> RunStore -> detectors -> metrics.

Each step reads what the store already holds and does only what is missing, one committed write per image,
detection and metric, so a run killed at any point and started again ends with exactly the results an
uninterrupted run gives. ``judge_run`` re-judges stored images with other detectors without regenerating.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from eraselab.errors import EraselabError
from eraselab.experiment_config import (
    EXPECTED,
    AttackConfig,
    DetectorConfig,
    Experiment,
    Group,
    GuardConfig,
    parse_experiment,
)
from eraselab.generate import iter_generate
from eraselab.judge.detectors import Detector, detect_safely, make_detector
from eraselab.judge.metrics import (
    METRICS,
    clip_scores,
    feature_distance,
    kernel_inception_distance,
    presence_change,
)
from eraselab.profile import profile_for
from eraselab.provenance import provenance
from eraselab.requests import GenerationRequest
from eraselab.store import RunStore, stable_hash
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


def _record_suites(experiment: Experiment, store: RunStore, suites: list[PromptSuite]) -> None:
    """Record each suite's content hash the first time; refuse a suite whose content changed since."""
    for group, suite in zip(experiment.groups, suites, strict=True):
        recorded = store.set_meta_once(f"suite:{group.suite}", suite.content_hash)
        if recorded != suite.content_hash:
            raise EraselabError(f"suite {group.suite!r} changed since this run started (hash {recorded[:12]} -> "
                                f"{suite.content_hash[:12]}); refusing to mix results, start a new run directory")


def _seeds(experiment: Experiment, item: PromptItem) -> tuple[int, ...]:
    if experiment.use_suite_seeds and item.seed is not None:
        return tuple(item.seed + offset for offset in experiment.seeds)
    return experiment.seeds


def _fingerprint(model: str, store: RunStore) -> str | None:
    return store.meta(f"fingerprint:{model}")


@functools.lru_cache(maxsize=64)
def edit_id(edit: str) -> str:
    """``base``, or the content hash an edit's manifest records (so a request key follows the edit's tensors,
    not the path it was read from)."""
    if edit == "base":
        return edit
    manifest = Path(edit) / "manifest.json"
    if not manifest.is_file():
        raise EraselabError(f"edit {edit!r} is not an edit directory (no manifest.json); use 'base' or a path")
    return "edit:" + str(json.loads(manifest.read_text()).get("sha256", ""))[:16]


def variants(experiment: Experiment) -> dict[str, tuple[str, GuardConfig | None]]:
    """The grid's model variants by label: every edit alone, then under each guard (``base+sld-strong(star)``)."""
    out: dict[str, tuple[str, GuardConfig | None]] = {}
    for edit in experiment.edits:
        out[edit] = (edit, None)
        for guard in experiment.guards:
            out[f"{edit}+{guard.label}"] = (edit, guard)
    return out


def variant_id(edit: str, guard: GuardConfig | None) -> str:
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
                    for seed in _seeds(experiment, item):
                        spec = _request(experiment, model, fingerprints[model], identity, item, seed)
                        cells.append((Cell(model, variant, g, i, seed, stable_hash(spec)), spec))
    return cells


def _generate(experiment: Experiment, store: RunStore, suites: list[PromptSuite], progress: bool,
              known: dict[str, str]) -> dict[str, str]:
    """Generate every missing image, each edit applied in turn and undone after; returns model fingerprints
    (``known``: those the checks already computed, so a large model is not hashed twice)."""
    from eraselab.erase.artifact import Edit, apply_edit
    from eraselab.models import load_pipeline, pipeline_fingerprint

    fingerprints: dict[str, str] = {}
    for image_hash in store.damaged_images():  # a missing or corrupt image is made again, never reused
        store.discard_image(image_hash)
    for model in experiment.models:
        pipe = load_pipeline(model, device=experiment.device, dtype=experiment.dtype)
        found = known.get(model) or pipeline_fingerprint(pipe)
        fingerprints[model] = store.set_meta_once(f"fingerprint:{model}", found)
        if fingerprints[model] != found:
            raise EraselabError(f"model {model!r} changed since this run started; start a new run directory")
        cells = plan(experiment, suites, {model: fingerprints[model]})
        for variant, (edit, guard) in variants(experiment).items():
            todo = {cell.key: spec for cell, spec in cells if cell.edit == variant and not store.has_image(cell.key)}
            if not todo:
                continue
            store.add_requests(list(todo.values()))
            requests = [GenerationRequest(s["prompt"], s["seed"], s["steps"], s["guidance"], s.get("height"),
                                          s.get("width")) for s in todo.values()]
            keys = list(todo)
            applied = None if edit == "base" else apply_edit(pipe, Edit.load(edit))
            try:
                for index, image in iter_generate(pipe, requests, experiment.batching, progress=progress,
                                                  guard=guard.build() if guard is not None else None):
                    store.put_image(keys[index], image)
            finally:
                if applied is not None:
                    applied.undo()
    return fingerprints


def _judge(store: RunStore, detectors: dict[str, Detector], keys: list[str], progress: bool) -> None:
    images = dict(store.images())
    for label, detector in detectors.items():
        settings = detector.settings()
        todo = []
        for key in dict.fromkeys(keys):
            image_hash = images.get(key)
            if image_hash is None:
                continue
            try:
                store.detection(image_hash, detector.name, detector.version, settings)
            except KeyError:
                todo.append(image_hash)
        todo = list(dict.fromkeys(todo))
        bar = tqdm(total=len(todo), desc=f"judge {label}", unit="img", disable=not progress)
        for start in range(0, len(todo), 64):
            chunk = todo[start:start + 64]
            loaded, errors = [], {}
            for image_hash in chunk:
                try:
                    loaded.append(store.load_image(image_hash))
                except EraselabError as error:
                    loaded.append(None)
                    errors[image_hash] = str(error)
            for image_hash, (result, error) in zip(chunk, detect_safely(detector, loaded), strict=True):
                store.put_detection(image_hash, detector.name, detector.version, settings, result,
                                    errors.get(image_hash, error))
            bar.update(len(chunk))
        bar.close()


def _flag(detector: Detector, result: dict | None, error: str | None, group: Group, item: PromptItem) -> bool | None:
    if error is not None or result is None:
        return None
    if group.concept != EXPECTED:
        return detector.present(result, group.concept)
    if not item.categories:
        raise EraselabError(f"suite {group.suite!r} gives no expected attributes for {item.prompt!r}; "
                            "set the group's concept")
    return all(detector.present(result, c) for c in item.categories)


def _metrics(experiment: Experiment, store: RunStore, suites: list[PromptSuite], cells: list[tuple[Cell, dict]],
             detectors: dict[str, Detector]) -> list[dict]:
    """One metric per (model, edit, group, detector): a group without a detector is scored by every detector.
    With ``base`` among the edits, each edit also gets its paired presence change against base at the same seeds."""
    images = dict(store.images())
    grouped: dict[tuple[str, str, int], list[Cell]] = {}  # each metric reads only its own cells
    for cell, _ in cells:
        grouped.setdefault((cell.model, cell.edit, cell.group), []).append(cell)
    written, labels = [], list(variants(experiment))
    for model in experiment.models:
        for g, group in enumerate(experiment.groups):
            for label in [group.detector] if group.detector else list(detectors):
                if group.metric == "clip_score":
                    written.extend(m for edit in labels if (m := _clip_metric(
                        experiment, store, suites, grouped.get((model, edit, g), []), images, model, edit, g, label,
                        detectors[label])))
                    continue
                by_edit = {edit: _group_metric(experiment, store, suites, grouped.get((model, edit, g), []), images,
                                               model, edit, g, label, detectors[label]) for edit in labels}
                written.extend(by_edit.values())
                if "base" not in by_edit:
                    continue
                base_flags = [i["flag"] for i in by_edit["base"]["value"]["items"]]
                for edit, metric in by_edit.items():
                    if edit == "base":
                        continue
                    change = presence_change(base_flags, [i["flag"] for i in metric["value"]["items"]])
                    inputs = {**metric["inputs"], "versus": "base"}
                    store.put_metric("presence_change", inputs, change)
                    written.append({"name": "presence_change", "inputs": inputs, "value": change})
                    written.extend(_locality(store, detectors[label], by_edit["base"], metric, inputs))
    return written


KID_MIN_IMAGES = 20  # below this, KID's interval is too wide to say anything


def _locality(store: RunStore, detector: Detector, base: dict, edited: dict, inputs: dict) -> list[dict]:
    """Feature distance at the same seed and KID (paired by seed) between the base and edited image sets, in the
    detector's feature space (skipped for detectors that cannot embed images, and for pairs with a missing image)."""
    features = getattr(detector, "features", None)
    if features is None:
        return []
    pairs = [(b["image"], e["image"]) for b, e in zip(base["value"]["items"], edited["value"]["items"], strict=True)
             if b["image"] and e["image"]]
    try:
        loaded = [(store.load_image(b), store.load_image(e)) for b, e in pairs]
    except EraselabError:
        return []  # a corrupt image is already reported as an error by the presence metrics
    if not loaded:
        return []
    base_features = torch.cat([features([b for b, _ in loaded[i:i + 256]]) for i in range(0, len(loaded), 256)])
    edit_features = torch.cat([features([e for _, e in loaded[i:i + 256]]) for i in range(0, len(loaded), 256)])
    out = [{"name": "feature_distance", "inputs": inputs, "value": feature_distance(base_features, edit_features)}]
    if len(loaded) >= KID_MIN_IMAGES:
        kid = kernel_inception_distance(base_features, edit_features)
        out.append({"name": "kid", "inputs": inputs, "value": kid})
    for metric in out:
        store.put_metric(metric["name"], metric["inputs"], metric["value"])
    return out


def _inputs(experiment: Experiment, store: RunStore, suite: PromptSuite, model: str, edit: str, g: int, label: str,
            detector: Detector) -> dict:
    base_edit, guard = variants(experiment)[edit]
    return {"model": model, "fingerprint": _fingerprint(model, store), "edit": edit,
            "edit_id": variant_id(base_edit, guard), **({"guard": guard.build().settings()} if guard else {}),
            "suite": suite.describe(), "group": asdict(experiment.groups[g]), "detector": label,
            "detector_version": detector.version, "detector_settings": detector.settings(),
            "seeds": list(experiment.seeds), "use_suite_seeds": experiment.use_suite_seeds,
            "steps": experiment.steps, "guidance": experiment.guidance}


def _clip_metric(experiment: Experiment, store: RunStore, suites: list[PromptSuite], cells: list[Cell],
                 images: dict[str, str], model: str, edit: str, g: int, label: str, detector: Detector) -> dict | None:
    """CLIP score of each image of ``cells`` with its own prompt, with the clip detector's model (other detectors:
    skipped)."""
    embedder = getattr(detector, "embedder", None)
    if embedder is None:
        return None
    items, pairs = [], []
    for cell in cells:
        prompt, image_hash = suites[g].items[cell.item].prompt, images.get(cell.key)
        try:
            image = store.load_image(image_hash) if image_hash else None
            error = None if image is not None else "image was never generated"
        except EraselabError as problem:
            image, error = None, str(problem)
        items.append({"prompt": prompt, "seed": cell.seed, "image": image_hash, "flag": None, "error": error})
        if image is not None:
            pairs.append((image, prompt))
    metric = METRICS.get("clip_score").factory()
    if pairs:
        metric.update(clip_scores(embedder, [i for i, _ in pairs], [p for _, p in pairs])["per_item"])
    value = metric.compute() | {"n_errors": sum(i["error"] is not None for i in items), "items": items}
    inputs = _inputs(experiment, store, suites[g], model, edit, g, label, detector)
    store.put_metric("clip_score", inputs, value)
    return {"name": "clip_score", "inputs": inputs, "value": value}


def _group_metric(experiment: Experiment, store: RunStore, suites: list[PromptSuite], cells: list[Cell],
                  images: dict[str, str], model: str, edit: str, g: int, label: str, detector: Detector) -> dict:
    """The group's presence-type metric over ``cells`` (its images for one model and edit)."""
    group, settings = experiment.groups[g], detector.settings()
    metric = METRICS.get(group.metric).factory()
    items = []
    for cell in cells:
        item = suites[g].items[cell.item]
        image_hash = images.get(cell.key)
        if image_hash is None:
            result, error = None, "image was never generated"
        else:
            try:
                result, error = store.detection(image_hash, detector.name, detector.version, settings)
            except KeyError:
                result, error = None, "image was never judged"
        flag = _flag(detector, result, error, group, item)
        metric.update([flag])
        items.append({"prompt": item.prompt, "seed": cell.seed, "image": image_hash, "flag": flag, "error": error})
    value = metric.compute()
    value["items"] = items
    inputs = _inputs(experiment, store, suites[g], model, edit, g, label, detector)
    store.put_metric(group.metric, inputs, value)
    return {"name": group.metric, "inputs": inputs, "value": value}


def attack_cell(model: str, edit: str, guard: GuardConfig | None, attack: AttackConfig) -> str:
    """A stable, readable directory name for one (model, defence, attack) cell of the grid."""
    key = stable_hash([model, variant_id(edit, guard), attack.label, attack.concept, attack.suite, attack.seeds])
    return f"{attack.name}-{key[:12]}"


def _attacks(experiment: Experiment, out: Path, progress: bool) -> dict:
    """Every attack against every edit and guard; a finished cell (summary.json) is skipped on resume, and a cell
    whose threat model the defence cannot offer is recorded as refused, with the reason."""
    from eraselab.attack.runner import run_attack
    from eraselab.models import load_pipeline

    counts = {"run": 0, "resumed": 0, "refused": 0}
    cells = [(m, label, edit, guard, a) for m in experiment.models
             for label, (edit, guard) in variants(experiment).items() for a in experiment.attacks]
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
                       None if edit == "base" else Path(edit), defence, attack.seeds, judge=judge.name,
                       pipelines=loaded[model], display=attack.label, unedited=unedited.setdefault(model, {}),
                       steps=experiment.steps, guidance=experiment.guidance, device=experiment.device,
                       dtype=experiment.dtype)
            counts["run"] += 1
        except EraselabError as error:
            cell.mkdir(parents=True, exist_ok=True)
            record = {"attack": attack.name, "label": attack.label, "model": model,
                      "edit": None if edit == "base" else edit,
                      "guard": defence.settings() if defence else None, "reason": str(error)}
            (cell / "refused.json").write_text(json.dumps(record, indent=2) + "\n")
            counts["refused"] += 1
    return counts


def _bind(store: RunStore, experiment: Experiment, out: Path) -> None:
    """Bind the run directory to ``experiment``. A directory bound to another experiment is refused once it holds
    a result; one that holds none (its run failed before the first image) is bound to this one instead."""
    config = json.dumps(asdict(experiment), sort_keys=True)
    held = store.meta("experiment")
    if held is not None and held != config:
        if store.has_results() or any((out / "attacks").glob("*/*.json")):
            raise EraselabError(f"{out} holds another experiment's results; use a new run directory")
        store.forget_unfinished()
    store.set_meta_once("experiment", config)
    store.set_meta_once("provenance", json.dumps(provenance(), sort_keys=True))


def run_experiment(experiment: Experiment, out: Path, progress: bool = True, dry_run: bool = False) -> dict:
    """Run (or resume) ``experiment`` into the run directory ``out``; returns a summary. Every check runs before
    anything is generated or written (:mod:`eraselab.preflight`); ``dry_run`` stops after them."""
    from eraselab.outputs import check_writable
    from eraselab.preflight import check_experiment

    check_writable(out)
    checked = check_experiment(experiment)
    if dry_run:
        size = sum(len(_seeds(experiment, i)) for s in checked.suites for i in s.items)
        total = size * len(experiment.models) * len(variants(experiment))
        return {"grid_images": total, "models": len(experiment.models), "edits": len(experiment.edits),
                "guards": len(experiment.guards), "attack_cells": len(experiment.models)
                * len(variants(experiment)) * len(experiment.attacks),
                "groups": len(checked.suites), "detectors": len(experiment.detectors), "dry_run": True}
    store = RunStore(out)
    try:
        _bind(store, experiment, out)
        _record_suites(experiment, store, checked.suites)
        fingerprints = _generate(experiment, store, checked.suites, progress, checked.fingerprints)
        cells = plan(experiment, checked.suites, fingerprints)
        _judge(store, checked.detectors, [c.key for c, _ in cells], progress)
        metrics = _metrics(experiment, store, checked.suites, cells, checked.detectors)
        attacks = _attacks(experiment, out, progress) if experiment.attacks else None
        return {"run_dir": str(out), "counts": store.counts(), "metrics": len(metrics), "attacks": attacks}
    finally:
        store.close()


def judge_run(run_dir: Path, detectors: tuple[DetectorConfig, ...], progress: bool = True) -> dict:
    """Judge a run's stored images with ``detectors`` (no generation) and compute its metrics with them."""
    from eraselab.preflight import build_detectors, check_concepts, load_suites

    if not (run_dir / "store.sqlite").is_file():
        raise EraselabError(f"{run_dir} is not a run directory (no store.sqlite; run `eraselab run` first)")
    store = RunStore(run_dir)
    try:
        raw = store.meta("experiment")
        if raw is None:
            raise EraselabError(f"{run_dir} holds no experiment (run `eraselab run` first)")
        stored = json.loads(raw)
        experiment = parse_experiment(_as_yaml_dict(stored))
        experiment = replace(experiment, detectors=detectors,
                             groups=tuple(replace(g, detector=None) for g in experiment.groups))
        store.check_images()
        suites = load_suites(experiment)
        made = build_detectors(experiment)
        check_concepts(experiment, suites, made)  # before judging anything
        _record_suites(experiment, store, suites)
        fingerprints = {m: _fingerprint(m, store) for m in experiment.models}
        if any(f is None for f in fingerprints.values()):
            raise EraselabError(f"{run_dir} has no generated images yet (run `eraselab run` first)")
        cells = plan(experiment, suites, fingerprints)  # type: ignore[arg-type]
        _judge(store, made, [c.key for c, _ in cells], progress)
        metrics = _metrics(experiment, store, suites, cells, made)
        return {"run_dir": str(run_dir), "counts": store.counts(), "metrics": len(metrics)}
    finally:
        store.close()


def _as_yaml_dict(stored: dict) -> dict:
    """The stored (dataclass) form of an experiment back into its YAML shape."""
    return {"version": stored["version"], "name": stored["name"], "models": stored["models"],
            "edits": stored["edits"], "seeds": stored["seeds"],
            "sampler": {"steps": stored["steps"], "guidance": stored["guidance"],
                        **{k: stored[k] for k in ("height", "width") if stored.get(k) is not None}},
            "device": stored.get("device", "cpu"), "dtype": stored.get("dtype", "float32"),
            "detectors": [{"name": d["name"], **d["options"]} for d in stored["detectors"]],
            "groups": [{k: v for k, v in g.items() if v is not None} for g in stored["groups"]],
            "use_suite_seeds": stored["use_suite_seeds"], "batch_size": stored["batch_size"],
            "fixed_batch_shape": stored.get("fixed_batch_shape", True),
            **({"guards": [{"name": g["name"], **g["options"]} for g in stored["guards"]]} if stored.get("guards")
               else {})}
