"""Running an experiment: plan -> generate -> judge -> metrics -> attacks, into a resumable run directory.

Each step reads what the store already holds and does only what is missing, one committed write per image,
detection and metric, so a run killed at any point and started again ends with exactly the results an
uninterrupted run gives. ``judge_run`` re-judges stored images with other detectors without regenerating.

Under ``torchrun`` or ``accelerate launch`` (:mod:`eraselab.distributed`) every process generates, judges and
attacks its own share of the grid (split by key), each on its own device, into the run's store (one node) or its
node's store (several nodes: :mod:`eraselab.node_store`); the main process binds the run directory first, and
when every process is done merges the node stores and computes the metrics.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from eraselab.distributed import process_ranks
from eraselab.errors import EraselabError
from eraselab.experiment.attacks import run_attacks
from eraselab.experiment.config import DetectorConfig, Experiment
from eraselab.experiment.context import Run
from eraselab.experiment.images import generate_missing
from eraselab.experiment.judging import judge_missing
from eraselab.experiment.metrics import compute_metrics
from eraselab.experiment.parse import parse_experiment
from eraselab.experiment.plan import plan, seeds_for, variants
from eraselab.experiment.preflight import build_detectors, check_concepts, check_experiment, load_suites
from eraselab.node_store import NodeStore, merge_nodes
from eraselab.outputs import check_writable
from eraselab.provenance import provenance
from eraselab.store import RunStore
from eraselab.suites import PromptSuite


def _record_suites(experiment: Experiment, store: RunStore, suites: list[PromptSuite]) -> None:
    """Record each suite's content hash the first time; refuse a suite whose content changed since."""
    for group, suite in zip(experiment.groups, suites, strict=True):
        recorded = store.set_meta_once(f"suite:{group.suite}", suite.content_hash)
        if recorded != suite.content_hash:
            raise EraselabError(f"suite {group.suite!r} changed since this run started (hash {recorded[:12]} -> "
                                f"{suite.content_hash[:12]}); refusing to mix results, start a new run directory")


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
    anything is generated or written (:mod:`eraselab.experiment.preflight`); ``dry_run`` stops after them."""
    check_writable(out)
    ranks = process_ranks(experiment.device)
    work = replace(experiment, device=ranks.device(experiment.device))  # this process's GPU; the run binds the YAML's
    checked = check_experiment(work)
    if dry_run:
        size = sum(len(seeds_for(experiment, i)) for s in checked.suites for i in s.items)
        total = size * len(experiment.models) * len(variants(experiment))
        return {"grid_images": total, "models": len(experiment.models), "edits": len(experiment.edits),
                "guards": len(experiment.guards), "attack_cells": len(experiment.models)
                * len(variants(experiment)) * len(experiment.attacks),
                "groups": len(checked.suites), "detectors": len(experiment.detectors), "dry_run": True}
    shared = ranks.nodes == 1  # one node: every process writes the one store; several: each node its own
    store = mine = None
    try:
        with ranks.main_first():  # one process makes, binds (or rebinds) and mends the store before the others
            if ranks.main or shared:
                store = RunStore(out)
                if ranks.main and not shared:
                    merge_nodes(store)  # what the nodes of a crashed run left
                _bind(store, experiment, out)
                _record_suites(experiment, store, checked.suites)
            if ranks.main:
                for image_hash in store.damaged_images():  # a missing or corrupt image is made again, never reused
                    store.discard_image(image_hash)
                if not shared:
                    store.settle()  # the nodes read it (nobody writes it until they are done)
        mine = store if shared else NodeStore(out, ranks.node)
        run = Run(work, out, mine, checked.suites, checked.detectors, progress and ranks.main, ranks)
        fingerprints, generated = generate_missing(run, checked.fingerprints)
        cells = plan(experiment, checked.suites, fingerprints)
        owned = [cell.key for cell, _ in cells if ranks.owns(cell.key)]  # each process judges what it generated
        judged = judge_missing(mine, checked.detectors, owned, run.progress)
        attacks = run_attacks(work, out, run.progress, ranks) if experiment.attacks else None
        counts = mine.counts()
        if mine is not store:
            mine.close()
        ranks.wait()  # every process's images and verdicts are committed
        metrics = []
        if ranks.main:
            if not shared:
                merge_nodes(store)
            metrics = compute_metrics(replace(run, store=store), cells)
            counts = store.counts()
        summary = {"run_dir": str(out), "counts": counts, "metrics": len(metrics), "attacks": attacks,
                   "generated": generated, "judged": judged}  # by this process
        return summary | ({"process": ranks.index, "processes": ranks.count} if ranks.count > 1 else {})
    finally:
        for opened in {id(s): s for s in (store, mine) if s is not None}.values():
            opened.close()


def judge_run(run_dir: Path, detectors: tuple[DetectorConfig, ...], progress: bool = True) -> dict:
    """Judge a run's stored images with ``detectors`` (no generation) and compute its metrics with them."""
    if not (run_dir / "store.sqlite").is_file():
        raise EraselabError(f"{run_dir} is not a run directory (no store.sqlite; run `eraselab run` first)")
    store = RunStore(run_dir)
    try:
        raw = store.meta("experiment")
        if raw is None:
            raise EraselabError(f"{run_dir} holds no experiment (run `eraselab run` first)")
        stored = json.loads(raw)
        experiment = parse_experiment(Experiment.yaml_form(stored))
        experiment = replace(experiment, detectors=detectors,
                             groups=tuple(replace(g, detector=None) for g in experiment.groups))
        store.check_images()
        suites = load_suites(experiment)
        made = build_detectors(experiment)
        check_concepts(experiment, suites, made)  # before judging anything
        _record_suites(experiment, store, suites)
        run = Run(experiment, run_dir, store, suites, made, progress)
        fingerprints = {m: run.fingerprint(m) for m in experiment.models}
        if any(f is None for f in fingerprints.values()):
            raise EraselabError(f"{run_dir} has no generated images yet (run `eraselab run` first)")
        cells = plan(experiment, suites, fingerprints)  # type: ignore[arg-type]
        judge_missing(store, made, [c.key for c, _ in cells], progress)
        metrics = compute_metrics(run, cells)
        return {"run_dir": str(run_dir), "counts": store.counts(), "metrics": len(metrics)}
    finally:
        store.close()
