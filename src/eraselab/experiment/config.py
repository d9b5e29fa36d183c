"""An experiment as data: the dataclasses a YAML file is validated into (:mod:`eraselab.experiment.parse`, whose
errors name the bad field) and back (:meth:`Experiment.to_dict`).

A benchmark is data (a versioned YAML file), never code. Example (the demo's)::

    version: 1
    name: tiny-star
    models: [tiny]
    edits: [base]                                          # or edit directories, or [a, b]: a stack applied together
    guards: [{name: sld, concept: star, preset: strong}]   # optional: each edit also runs under each guard
    attacks:                                                # optional: every edit and guard is attacked
      - {name: embedding-recovery, concept: star, suite: "tiny:target:star", seeds: 4}
      - {name: concept-vector, concept: star, suite: "tiny:target:star", options: {strength: 5.0}}
    seeds: {start: 0, count: 8}
    sampler: {steps: 25, guidance: 5.0}
    detectors: [tiny]
    groups:
      - {suite: "tiny:target:star", metric: efficacy, concept: shape=star}
      - {suite: "tiny:heldout:star", metric: generality, concept: shape=star}
      - {suite: "tiny:neighbour:star", metric: specificity}     # concept: each prompt's expected attributes
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from eraselab.batching import DEFAULT_BATCHING, Batching
from eraselab.judge.metrics import METRICS
from eraselab.profile import STABLE_DIFFUSION, ModelProfile

CONFIG_VERSION = 1
EXPECTED = "expected"  # judge each prompt against the attributes its suite says it should show
# Per-group metrics (the ones streamed per group): four presence rates judged by a detector, and CLIP score (each
# image with its own prompt, computed with a clip detector's model).
GROUP_METRICS = tuple(name for name in METRICS.names() if METRICS.get(name).factory is not None)


@dataclass(frozen=True)
class Group:
    suite: str
    metric: str
    concept: str = EXPECTED
    detector: str | None = None  # default: the experiment's first detector


def options_label(name: str, options: dict) -> str:
    """``name[key=value]...``: how a detector or an attack with options is named in runs and reports."""
    return name + "".join(f"[{k}={v}]" for k, v in sorted(options.items()))


@dataclass(frozen=True)
class DetectorConfig:
    name: str
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return options_label(self.name, self.options)


@dataclass(frozen=True)
class GuardConfig:
    """An inference-time guard of the grid (:mod:`eraselab.guard`), applied on top of every edit."""

    name: str
    options: dict = field(default_factory=dict)

    def build(self):
        from eraselab.guard import make_guard

        return make_guard(self.name, **self.options)

    @property
    def label(self) -> str:
        return self.build().label


@dataclass(frozen=True)
class AttackConfig:
    """An attack of the grid (:mod:`eraselab.attack`), run against every edit and guard of the experiment."""

    name: str
    concept: str
    suite: str
    seeds: int = 4
    options: dict = field(default_factory=dict)

    def settings(self, profile: ModelProfile = STABLE_DIFFUSION):
        """The attack's config on a model of ``profile``: the paper's defaults, the profile's, then the options."""
        from eraselab.attack import ATTACKS
        from eraselab.options import build

        return build(ATTACKS, self.name, self.options, profile)

    @property
    def label(self) -> str:
        return options_label(self.name, self.options)


EditEntry = str | tuple[str, ...]  # "base", an edit directory, or a stack of them applied together


@dataclass(frozen=True)
class Experiment:
    name: str
    models: tuple[str, ...]
    edits: tuple[EditEntry, ...]
    seeds: tuple[int, ...]
    steps: int
    guidance: float
    detectors: tuple[DetectorConfig, ...]
    groups: tuple[Group, ...]
    use_suite_seeds: bool = False  # I2P-style suites carry one seed per prompt
    batch_size: int = DEFAULT_BATCHING.size  # requests per pipeline call; see eraselab.batching.Batching
    fixed_batch_shape: bool | None = DEFAULT_BATCHING.fixed_shape  # None: the policy of eraselab.batching
    device: str = "cpu"
    dtype: str = "float32"
    height: int | None = None  # image size (default: the model's)
    width: int | None = None
    version: int = CONFIG_VERSION
    guards: tuple[GuardConfig, ...] = ()
    attacks: tuple[AttackConfig, ...] = ()

    @property
    def batching(self) -> Batching:
        return Batching(self.batch_size, self.fixed_batch_shape)

    def to_dict(self) -> dict:
        """The experiment as YAML writes it: ``parse_experiment(e.to_dict()) == e``."""
        return self.yaml_form(asdict(self))

    @staticmethod
    def yaml_form(record: dict) -> dict:
        """An experiment's stored (dataclass) record in its YAML shape, the inverse of :func:`parse_experiment`."""
        def named(entries: list[dict]) -> list[dict]:
            return [{"name": e["name"], **e["options"]} for e in entries]

        sampler = {"steps": record["steps"], "guidance": record["guidance"],
                   **{k: record[k] for k in ("height", "width") if record.get(k) is not None}}
        return _plain({"version": record["version"], "name": record["name"], "models": record["models"],
                "edits": record["edits"], "seeds": record["seeds"], "sampler": sampler,
                "device": record["device"], "dtype": record["dtype"], "detectors": named(record["detectors"]),
                "groups": [{k: v for k, v in g.items() if v is not None} for g in record["groups"]],
                "use_suite_seeds": record["use_suite_seeds"], "batch_size": record["batch_size"],
                "fixed_batch_shape": record["fixed_batch_shape"], "guards": named(record["guards"]),
                "attacks": record["attacks"]})


def _plain(value: Any) -> Any:
    """``value`` with every tuple a list, as YAML (safe_dump) and JSON write them."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
