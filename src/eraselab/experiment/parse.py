"""Experiment files: YAML (``yaml.safe_load``) validated field by field into an
:class:`~eraselab.experiment.config.Experiment`, every error naming the bad field (``experiment field
'groups[0].metric': ...``). :meth:`Experiment.to_dict <eraselab.experiment.config.Experiment.to_dict>` is the
inverse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eraselab.batching import DEFAULT_BATCHING
from eraselab.errors import EraselabError
from eraselab.experiment.config import (
    CONFIG_VERSION,
    EXPECTED,
    GROUP_METRICS,
    AttackConfig,
    DetectorConfig,
    Experiment,
    Group,
    GuardConfig,
)
from eraselab.judge.metrics import METRICS


def _fail(where: str, message: str) -> EraselabError:
    return EraselabError(f"experiment field {where!r}: {message}")


def _list_of_str(raw: dict, key: str, default: list[str] | None = None) -> tuple[str, ...]:
    value = raw.get(key, default)
    if value is None:
        raise _fail(key, "is required")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _fail(key, "must be a non-empty list of names")
    return tuple(value)


def _edits(raw: dict) -> tuple[str | tuple[str, ...], ...]:
    """``edits``: names (``base`` or an edit directory) and stacks (a list of edit directories applied together)."""
    value = raw.get("edits", ["base"])
    entries = []
    for i, entry in enumerate(value if isinstance(value, list) else [value]):
        if isinstance(entry, list) and entry and all(isinstance(e, str) and e and e != "base" for e in entry):
            entries.append(entry[0] if len(entry) == 1 else tuple(entry))
        elif isinstance(entry, str) and entry:
            entries.append(entry)
        else:
            raise _fail(f"edits[{i}]", "must be 'base', an edit directory, or a list of edit directories to stack")
    if not entries:
        raise _fail("edits", "must be a non-empty list of edits")
    return tuple(entries)


def _seeds(raw: Any) -> tuple[int, ...]:
    if isinstance(raw, dict):
        unknown = set(raw) - {"start", "count"}
        if unknown or not isinstance(raw.get("count"), int) or raw["count"] < 1:
            raise _fail("seeds", "must be a list of integers or {start: INT, count: INT >= 1}")
        start = raw.get("start", 0)
        if not isinstance(start, int):
            raise _fail("seeds.start", "must be an integer")
        return tuple(range(start, start + raw["count"]))
    if isinstance(raw, list) and raw and all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        return tuple(raw)
    raise _fail("seeds", "must be a list of integers or {start: INT, count: INT >= 1}")


def _named(entry: Any, where: str) -> tuple[str, dict]:
    """A detector or guard entry, ``NAME`` or ``{name: NAME, option: value, ...}``, as (name, options)."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        return entry["name"], {k: v for k, v in entry.items() if k != "name"}
    raise _fail(where, "must be a name or {name: ..., options...}")


def _detectors(raw: Any) -> tuple[DetectorConfig, ...]:
    if isinstance(raw, str | dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise _fail("detectors", "must be a non-empty list")
    return tuple(DetectorConfig(*_named(entry, f"detectors[{i}]")) for i, entry in enumerate(raw))


def _guards(raw: Any) -> tuple[GuardConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _fail("guards", "must be a list of guard names or {name: ..., options...}")
    out = []
    for i, entry in enumerate(raw):
        config = GuardConfig(*_named(entry, f"guards[{i}]"))
        try:
            config.build()
        except (EraselabError, TypeError) as error:
            raise _fail(f"guards[{i}]", str(error)) from None
        same = next((j for j, other in enumerate(out) if other.label == config.label), None)
        if same is not None:  # tables, the store's variants and the report know a guard by its label
            raise _fail(f"guards[{i}]", f"has the same label {config.label!r} as guards[{same}]; a guard that "
                        "differs only in options its label does not show cannot share an experiment with it "
                        "(run it in an experiment of its own)")
        out.append(config)
    return tuple(out)


def _attacks(raw: Any) -> tuple[AttackConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _fail("attacks", "must be a list of {name, concept, suite, seeds, options}")
    out = []
    for i, entry in enumerate(raw):
        where = f"attacks[{i}]"
        if not isinstance(entry, dict):
            raise _fail(where, "must be a mapping {name, concept, suite, seeds, options}")
        unknown = set(entry) - {"name", "concept", "suite", "seeds", "options"}
        if unknown:
            fields = "name, concept, suite, seeds, options"
            raise _fail(f"{where}.{sorted(unknown)[0]}", f"is not an attack field ({fields})")
        for key in ("name", "concept", "suite"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise _fail(f"{where}.{key}", "is required (a string)")
        seeds, options = entry.get("seeds", 4), entry.get("options", {})
        if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
            raise _fail(f"{where}.seeds", f"must be an integer >= 1, got {seeds!r}")
        if not isinstance(options, dict):
            raise _fail(f"{where}.options", "must be a mapping of the attack's settings")
        from eraselab.attack import ATTACKS
        from eraselab.options import check_options

        try:
            attack = ATTACKS.get(entry["name"])
        except EraselabError as error:
            raise _fail(f"{where}.name", str(error)) from None
        try:
            options = check_options(attack.config, options, f"the {entry['name']} attack")
            attack.config(**options)  # the config's own checks of its values
        except EraselabError as error:
            raise _fail(f"{where}.options", str(error)) from None
        out.append(AttackConfig(entry["name"], entry["concept"], entry["suite"], seeds, options))
    return tuple(out)


def _groups(raw: Any, detectors: tuple[DetectorConfig, ...]) -> tuple[Group, ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail("groups", "must be a non-empty list of {suite, metric, concept}")
    labels = {d.label for d in detectors} | {d.name for d in detectors}
    out = []
    for i, entry in enumerate(raw):
        where = f"groups[{i}]"
        if not isinstance(entry, dict):
            raise _fail(where, "must be a mapping with suite and metric")
        unknown = set(entry) - {"suite", "metric", "concept", "detector"}
        if unknown:
            raise _fail(f"{where}.{sorted(unknown)[0]}", "is not a group field (suite, metric, concept, detector)")
        if not isinstance(entry.get("suite"), str):
            raise _fail(f"{where}.suite", "is required (a suite name or a CSV/JSONL path)")
        metric = entry.get("metric")
        if metric not in GROUP_METRICS:
            known = ", ".join(GROUP_METRICS)
            if isinstance(metric, str) and metric in METRICS:
                raise _fail(f"{where}.metric", f"{metric!r} is computed from pairs, not per group (use: {known})")
            raise _fail(f"{where}.metric", f"must be one of {known}, got {metric!r}")
        detector = entry.get("detector")
        if detector is not None and detector not in labels:
            raise _fail(f"{where}.detector", f"{detector!r} is not among the experiment's detectors")
        if detector is not None and detector not in {d.label for d in detectors}:  # a bare name: must be unique
            named = [d.label for d in detectors if d.name == detector]
            if len(named) > 1:
                raise _fail(f"{where}.detector", f"{detector!r} is ambiguous; use one of {', '.join(named)}")
            detector = named[0]
        if metric == "clip_score" and not any(d.name == "clip" for d in detectors):
            raise _fail(f"{where}.metric", "clip_score needs a clip detector (its CLIP model) among the detectors")
        out.append(Group(entry["suite"], metric, str(entry.get("concept", EXPECTED)), detector))
    return tuple(out)


def parse_experiment(raw: Any) -> Experiment:
    """Validate a loaded YAML document into an :class:`Experiment`."""
    if not isinstance(raw, dict):
        raise EraselabError("an experiment file must be a YAML mapping")
    known = {"version", "name", "models", "edits", "guards", "attacks", "seeds", "sampler", "detectors", "groups",
             "use_suite_seeds", "batch_size", "fixed_batch_shape", "device", "dtype"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _fail(unknown[0], f"is not an experiment field ({', '.join(sorted(known))})")
    if raw.get("version", CONFIG_VERSION) != CONFIG_VERSION:
        raise _fail("version", f"this eraselab reads version {CONFIG_VERSION}, got {raw.get('version')!r}")
    sampler = raw.get("sampler", {})
    if not isinstance(sampler, dict) or set(sampler) - {"steps", "guidance", "height", "width"}:
        raise _fail("sampler", "must be {steps: INT, guidance: NUMBER, height: INT, width: INT}")
    for key in ("height", "width"):
        value = sampler.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise _fail(f"sampler.{key}", f"must be a positive integer, got {value!r}")
    from eraselab.models.loading import DTYPES

    if raw.get("dtype", "float32") not in DTYPES:
        raise _fail("dtype", f"must be one of float32, float16, bfloat16, got {raw.get('dtype')!r}")
    if not isinstance(raw.get("device", "cpu"), str):
        raise _fail("device", f"must be a torch device name such as cpu or cuda, got {raw.get('device')!r}")
    steps, guidance = sampler.get("steps", 25), sampler.get("guidance", 5.0)
    if not isinstance(steps, int) or steps < 1:
        raise _fail("sampler.steps", f"must be an integer >= 1, got {steps!r}")
    if not isinstance(guidance, int | float) or isinstance(guidance, bool):
        raise _fail("sampler.guidance", f"must be a number, got {guidance!r}")
    batch_size = raw.get("batch_size", DEFAULT_BATCHING.size)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise _fail("batch_size", f"must be an integer >= 1, got {batch_size!r}")
    fixed_batch_shape = raw.get("fixed_batch_shape", DEFAULT_BATCHING.fixed_shape)
    if fixed_batch_shape is not None and not isinstance(fixed_batch_shape, bool):
        raise _fail("fixed_batch_shape", f"must be true, false or null (the policy), got {fixed_batch_shape!r}")
    detectors = _detectors(raw.get("detectors", ["tiny"]))
    name = raw.get("name", "experiment")
    if not isinstance(name, str) or not name:
        raise _fail("name", "must be a non-empty string")
    return Experiment(name=name, models=_list_of_str(raw, "models", ["tiny"]),
                      edits=_edits(raw), seeds=_seeds(raw.get("seeds", {"count": 4})),
                      steps=steps, guidance=float(guidance), detectors=detectors,
                      groups=_groups(raw.get("groups"), detectors),
                      use_suite_seeds=bool(raw.get("use_suite_seeds", False)), batch_size=batch_size,
                      fixed_batch_shape=fixed_batch_shape, device=raw.get("device", "cpu"),
                      dtype=raw.get("dtype", "float32"), height=sampler.get("height"), width=sampler.get("width"),
                      guards=_guards(raw.get("guards")), attacks=_attacks(raw.get("attacks")))


def load_experiment(path: str | Path) -> Experiment:
    from eraselab.config_files import read_yaml

    return parse_experiment(read_yaml(Path(path), "experiment file"))
