"""Metrics step of a run: one metric per (model, variant, group, detector) from the stored detections, and for
each edit beside ``base`` its paired presence change and locality (feature distance, KID) at the same seeds.

Every metric is stored as a :class:`MetricRecord`: its name, the inputs that identify it (model and its
fingerprint, variant and its content id, suite and its hash, group, detector and its version and settings, seeds,
sampler) and its value: the aggregate with its interval (``value``, ``low``, ``high``, ``n_valid``, ``n_errors``),
the per-item values (``per_item``) and, for group metrics, each item's prompt, seed, image and verdict
(``items``). The report reads these records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from eraselab.errors import EraselabError
from eraselab.experiment.config import EXPECTED, Group
from eraselab.experiment.context import Run
from eraselab.experiment.plan import Cell, variant_id, variants
from eraselab.judge.detectors import Detector
from eraselab.judge.metrics import METRICS, clip_scores, feature_distance, kernel_inception_distance, presence_change
from eraselab.store import RunStore
from eraselab.suites import PromptItem

KID_MIN_IMAGES = 20  # below this, KID's interval is too wide to say anything


@dataclass(frozen=True)
class MetricRecord:
    name: str
    inputs: dict
    value: dict

    def save(self, store: RunStore) -> MetricRecord:
        store.put_metric(self.name, self.inputs, self.value)
        return self

    @property
    def flags(self) -> list[bool | None]:
        """Each item's verdict (a group metric's)."""
        return [item["flag"] for item in self.value["items"]]


@dataclass(frozen=True)
class Scope:
    """What one group metric covers: a model, a variant (edit, or edit + guard), a group and a detector's label."""

    model: str
    variant: str
    group: int
    detector: str


def compute_metrics(run: Run, cells: list[tuple[Cell, dict]]) -> list[MetricRecord]:
    """Every metric of the grid (see the module docstring); a group without a detector is scored by every one."""
    images = dict(run.store.images())
    grouped: dict[tuple[str, str, int], list[Cell]] = {}  # each metric reads only its own cells
    for cell, _ in cells:
        grouped.setdefault((cell.model, cell.edit, cell.group), []).append(cell)
    written, labels = [], list(variants(run.experiment))
    for model in run.experiment.models:
        for g, group in enumerate(run.experiment.groups):
            for label in [group.detector] if group.detector else list(run.detectors):
                scopes = {variant: Scope(model, variant, g, label) for variant in labels}
                if group.metric == "clip_score":
                    written.extend(m for s in scopes.values()
                                   if (m := _clip_metric(run, s, grouped.get((model, s.variant, g), []), images)))
                    continue
                by_variant = {v: _group_metric(run, s, grouped.get((model, v, g), []), images)
                              for v, s in scopes.items()}
                written.extend(by_variant.values())
                if "base" in by_variant:
                    written.extend(_against_base(run, by_variant, run.detectors[label]))
    return written


def _against_base(run: Run, by_variant: dict[str, MetricRecord], detector: Detector) -> list[MetricRecord]:
    """Each variant's paired presence change against ``base`` at the same seeds, and its locality."""
    base, out = by_variant["base"], []
    for variant, metric in by_variant.items():
        if variant == "base":
            continue
        inputs = {**metric.inputs, "versus": "base"}
        out.append(MetricRecord("presence_change", inputs, presence_change(base.flags, metric.flags)).save(run.store))
        out.extend(_locality(run.store, detector, base, metric, inputs))
    return out


def _locality(store: RunStore, detector: Detector, base: MetricRecord, edited: MetricRecord,
              inputs: dict) -> list[MetricRecord]:
    """Feature distance at the same seed and KID (paired by seed) between the base and edited image sets, in the
    detector's feature space (skipped for detectors that cannot embed images, and for pairs with a missing image)."""
    features = getattr(detector, "features", None)
    if features is None:
        return []
    pairs = [(b["image"], e["image"]) for b, e in zip(base.value["items"], edited.value["items"], strict=True)
             if b["image"] and e["image"]]
    try:
        loaded = [(store.load_image(b), store.load_image(e)) for b, e in pairs]
    except EraselabError:
        return []  # a corrupt image is already reported as an error by the presence metrics
    if not loaded:
        return []
    base_features = torch.cat([features([b for b, _ in loaded[i:i + 256]]) for i in range(0, len(loaded), 256)])
    edit_features = torch.cat([features([e for _, e in loaded[i:i + 256]]) for i in range(0, len(loaded), 256)])
    out = [MetricRecord("feature_distance", inputs, feature_distance(base_features, edit_features))]
    if len(loaded) >= KID_MIN_IMAGES:
        out.append(MetricRecord("kid", inputs, kernel_inception_distance(base_features, edit_features)))
    return [metric.save(store) for metric in out]


def _inputs(run: Run, scope: Scope) -> dict:
    experiment, detector = run.experiment, run.detectors[scope.detector]
    edit, guard = variants(experiment)[scope.variant]
    return {"model": scope.model, "fingerprint": run.fingerprint(scope.model), "edit": scope.variant,
            "edit_id": variant_id(edit, guard), **({"guard": guard.build().settings()} if guard else {}),
            "suite": run.suites[scope.group].describe(), "group": asdict(experiment.groups[scope.group]),
            "detector": scope.detector, "detector_version": detector.version,
            "detector_settings": detector.settings(), "seeds": list(experiment.seeds),
            "use_suite_seeds": experiment.use_suite_seeds, "steps": experiment.steps,
            "guidance": experiment.guidance}


def _clip_metric(run: Run, scope: Scope, cells: list[Cell], images: dict[str, str]) -> MetricRecord | None:
    """CLIP score of each image of ``cells`` with its own prompt, with the clip detector's model (other detectors:
    skipped)."""
    embedder = getattr(run.detectors[scope.detector], "embedder", None)
    if embedder is None:
        return None
    items, pairs = [], []
    for cell in cells:
        prompt, image_hash = run.suites[scope.group].items[cell.item].prompt, images.get(cell.key)
        try:
            image = run.store.load_image(image_hash) if image_hash else None
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
    return MetricRecord("clip_score", _inputs(run, scope), value).save(run.store)


def _flag(detector: Detector, result: dict | None, error: str | None, group: Group, item: PromptItem) -> bool | None:
    if error is not None or result is None:
        return None
    if group.concept != EXPECTED:
        return detector.present(result, group.concept)
    if not item.categories:
        raise EraselabError(f"suite {group.suite!r} gives no expected attributes for {item.prompt!r}; "
                            "set the group's concept")
    return all(detector.present(result, c) for c in item.categories)


def _group_metric(run: Run, scope: Scope, cells: list[Cell], images: dict[str, str]) -> MetricRecord:
    """The group's presence-type metric over ``cells`` (its images for one model and variant)."""
    group, detector = run.experiment.groups[scope.group], run.detectors[scope.detector]
    settings = detector.settings()
    metric = METRICS.get(group.metric).factory()
    items = []
    for cell in cells:
        item = run.suites[scope.group].items[cell.item]
        image_hash = images.get(cell.key)
        if image_hash is None:
            result, error = None, "image was never generated"
        else:
            try:
                result, error = run.store.detection(image_hash, detector.name, detector.version, settings)
            except KeyError:
                result, error = None, "image was never judged"
        flag = _flag(detector, result, error, group, item)
        metric.update([flag])
        items.append({"prompt": item.prompt, "seed": cell.seed, "image": image_hash, "flag": flag, "error": error})
    value = metric.compute()
    value["items"] = items
    return MetricRecord(group.metric, _inputs(run, scope), value).save(run.store)
