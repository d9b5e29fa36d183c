"""Every check an experiment can fail, run before its first image; ``eraselab run --dry-run`` runs exactly these.

A typo found after an hour of generation costs the hour, and a concept a detector cannot judge, if it is never
found, costs a wrong number (an unknown class reads as "absent", and 0.000 reads as perfect erasure). So before
anything is generated or recorded:

1. every suite of the groups and of the attacks loads;
2. every detector is built with its options;
3. every group's concept, or each of its prompts' expected attributes, is one its detectors can judge;
4. every edit loads (sealed manifest, hashed tensors) and was made for every model of the grid;
5. every model loads, and every prompt (rewritten by every guard) is in its vocabulary;
6. every attack's concept gives a label the experiment's judge can judge.

Each failure is one :class:`EraselabError` naming the experiment field, as the parser's errors do.
"""

from __future__ import annotations

from dataclasses import dataclass

from eraselab.errors import EraselabError
from eraselab.experiment.config import EXPECTED, Experiment
from eraselab.experiment.plan import edit_parts
from eraselab.judge.detectors import Detector, make_detector
from eraselab.suites import PromptSuite, load_suite


@dataclass
class Checked:
    """What the checks built, for the run to use: the groups' suites, the detectors by label, and each model's
    fingerprint."""

    suites: list[PromptSuite]
    detectors: dict[str, Detector]
    fingerprints: dict[str, str]


def _field(where: str, error: EraselabError) -> EraselabError:
    return EraselabError(f"experiment field {where!r}: {error}")


def load_suites(experiment: Experiment) -> list[PromptSuite]:
    suites = []
    for i, group in enumerate(experiment.groups):
        try:
            suites.append(load_suite(group.suite))
        except EraselabError as error:
            raise _field(f"groups[{i}].suite", error) from None
    return suites


def build_detectors(experiment: Experiment) -> dict[str, Detector]:
    detectors = {}
    for i, config in enumerate(experiment.detectors):
        try:
            detectors[config.label] = make_detector(config.name, **config.options)
        except (EraselabError, TypeError, ValueError, OSError) as error:
            raise _field(f"detectors[{i}]", EraselabError(str(error))) from None
    return detectors


def check_concepts(experiment: Experiment, suites: list[PromptSuite], detectors: dict[str, Detector]) -> None:
    """Every concept a group's metric will ask its detectors about is one they can judge."""
    for i, (group, suite) in enumerate(zip(experiment.groups, suites, strict=True)):
        if group.metric == "clip_score":
            continue  # scored against each prompt, asks no concept
        for label in [group.detector] if group.detector else list(detectors):
            detector = detectors[label]
            try:
                if group.concept != EXPECTED:
                    detector.check_concept(group.concept)
                    continue
                for item in suite.items:
                    if not item.categories:
                        raise EraselabError(f"suite {group.suite!r} gives no expected attributes for "
                                            f"{item.prompt!r}; set the group's concept")
                    for category in item.categories:
                        detector.check_concept(category)
            except EraselabError as error:
                where = f"groups[{i}].concept"
                raise _field(where, EraselabError(f"{error} (detector {label})")) from None


def check_edits_and_models(experiment: Experiment, prompts: list[str]) -> dict[str, str]:
    """Load every edit and every model; each edit must have been made for each model, and every prompt of the
    grid, as each guard rewrites it, must be in each model's vocabulary. Returns each model's fingerprint."""
    from eraselab.erase.artifact import Edit, check_stack
    from eraselab.generate import check_requests, check_size
    from eraselab.models import load_pipeline, pipeline_fingerprint
    from eraselab.requests import GenerationRequest

    made_for = {}
    for i, entry in enumerate(experiment.edits):
        try:
            loaded = [Edit.load(edit) for edit in edit_parts(entry)]
            check_stack(loaded)
        except EraselabError as error:
            raise _field(f"edits[{i}]", error) from None
        made_for.update({edit: e.base_fingerprint() for edit, e in zip(edit_parts(entry), loaded, strict=True)})
    fingerprints = {}
    for i, model in enumerate(experiment.models):
        try:
            pipe = load_pipeline(model, device=experiment.device, dtype=experiment.dtype)
        except EraselabError as error:
            raise _field(f"models[{i}]", error) from None
        try:
            check_size(pipe, experiment.height, experiment.width)
        except EraselabError as error:
            raise _field("sampler", EraselabError(f"{error} ({model})")) from None
        fingerprints[model] = pipeline_fingerprint(pipe)
        for edit, expected in made_for.items():
            if expected != fingerprints[model]:
                raise _field("edits", EraselabError(f"{edit} was made for base model {expected}, not for {model} "
                                                    f"({fingerprints[model]})"))
        requests = [GenerationRequest(p, 0) for p in prompts]
        for guard in [None, *experiment.guards] if requests else []:
            built = guard.build() if guard is not None else None
            try:
                check_requests(pipe, [built.rewrite(r) for r in requests] if built else requests)
                if built is not None:
                    built.guidance_rule(pipe)  # its own words, and whether it runs on this model (SDXL)
            except EraselabError as error:
                where = f"guards[{experiment.guards.index(guard)}]" if guard is not None else "groups"
                raise _field(where, EraselabError(f"{error} (model {model})")) from None
    return fingerprints


def check_attacks(experiment: Experiment, detectors: dict[str, Detector]) -> None:
    judge_config = experiment.detectors[0]
    judge = detectors[judge_config.label]
    for i, attack in enumerate(experiment.attacks):
        try:
            load_suite(attack.suite)
        except EraselabError as error:
            raise _field(f"attacks[{i}].suite", error) from None
        try:
            judge.check_concept(judge.label_for(attack.concept))
        except EraselabError as error:
            raise _field(f"attacks[{i}].concept", error) from None


def check_experiment(experiment: Experiment) -> Checked:
    """Run every check (see the module docstring); returns what they built."""
    suites = load_suites(experiment)
    detectors = build_detectors(experiment)
    check_concepts(experiment, suites, detectors)
    check_attacks(experiment, detectors)
    prompts = sorted({item.prompt for suite in suites for item in suite.items})
    fingerprints = check_edits_and_models(experiment, prompts)
    return Checked(suites, detectors, fingerprints)
