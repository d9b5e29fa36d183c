"""What an audit runs: the erasure grid of one concept (efficacy, generality, specificity against the unedited
model, with the pinned judge) and the attacks the chosen threat model allows, cheapest first, within a budget.

Threat models (what the auditor assumes an adversary holds), from strongest to weakest:

- ``white-box``: the released weights; every attack (:data:`eraselab.attack.base.THREAT_MODELS`) applies;
- ``grey-box``: the public text encoder and control of the sampler (a local copy of the pipeline without the
  edited weights' internals): text-encoder, sampler-control and black-box-query attacks;
- ``black-box``: typed prompts and the images that come back: black-box-query attacks only.

Each attack's cost is estimated from what it cost on the tiny model at the attack table's protocol (UNet and
text-encoder evaluations a prompt, worst case over the defences of ``benchmarks/attack_table.py``), scaled by
how its settings and the sampler's steps change the bound its own loop puts on it (``AttackEntry.evaluations``):
on tiny the estimate is the measurement; at Stable Diffusion's defaults UnlearnDiffAtk's 40 steps rated by the
oracle at every step cost 3.8 times the tiny 100 steps rated every fifth, and Ring-A-Bell's 200 x 3,000 genetic
search 157 times the tiny 64 x 60. Attacks are taken cheapest first (UNet evaluations, then text-encoder ones)
while both totals fit: ``budget`` UNet evaluations and ``text_budget`` text-encoder evaluations (default ten per
UNet evaluation: a text-encoder pass cost a fifth of a UNet evaluation at SD-1.4 size on an H200, 3.3 vs 15 ms,
and under a hundredth on a CPU, ``benchmarks/sd_scale.py``). The card reports the cost each attack really took.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eraselab.errors import EraselabError
from eraselab.options import build
from eraselab.profile import TINY, profile_for

AUDIT_THREAT_MODELS = {
    "white-box": ("white-box-weights", "white-box-gradients", "text-encoder", "sampler-control", "black-box-queries"),
    "grey-box": ("text-encoder", "sampler-control", "black-box-queries"),
    "black-box": ("black-box-queries",),
}
# (attack, options) -> (UNet evals, text-encoder evals) a prompt, the most any defence of the attack table cost
# (`python benchmarks/attack_table.py --concept star`, 6 prompts, tiny defaults, 25 sampler steps).
ATTACK_COSTS: dict[tuple[str, str], tuple[float, float]] = {
    ("embedding-recovery", ""): (0, 1),
    ("concept-vector", ""): (0, 3.67),
    ("concept-vector", "search"): (0, 1988),
    ("textual-inversion", ""): (400, 200),
    ("p4d", ""): (700, 124),
    ("unlearndiff", ""): (2150, 180),
    ("concept-arithmetic", ""): (24750, 720),
}
DEFAULT_BUDGET = 20_000  # UNet evaluations: every attack but concept arithmetic at 6 prompts on tiny
DEFAULT_TEXT_BUDGET = 10 * DEFAULT_BUDGET  # text-encoder evaluations


@dataclass(frozen=True)
class AuditRequest:
    """One audit: the defended model (``edits`` applied together, under ``guard``), the concept and the protocol."""

    model: str
    concept: str
    edits: tuple[str, ...] = ()
    guard: str | None = None
    guard_options: dict = field(default_factory=dict)  # over the concept the audit gives the guard
    suite: str | None = None  # the concept's prompts (tiny: the world's own suites)
    preserve_suites: tuple[str, ...] = ()  # prompts whose content must survive (tiny: the world's)
    judge: str | None = None  # detector name (tiny: the tiny classifier)
    judge_options: dict = field(default_factory=dict)
    label: str | None = None  # what the judge looks for (tiny: the concept's class)
    threat_model: str = "white-box"
    budget: int = DEFAULT_BUDGET  # UNet evaluations for the attacks
    text_budget: int = DEFAULT_TEXT_BUDGET  # text-encoder evaluations for the attacks
    seeds: int = 12  # per prompt, for efficacy, generality and specificity
    attack_seeds: int = 4
    steps: int | None = None  # sampler steps (default: the model's profile)
    guidance: float | None = None
    device: str = "cpu"
    attacks: tuple[str, ...] = ()  # run only these (attack labels, e.g. "concept-vector[search=True]"); () = all

    def check(self) -> None:
        if self.threat_model not in AUDIT_THREAT_MODELS:
            raise EraselabError(f"threat model must be one of {', '.join(AUDIT_THREAT_MODELS)}, got "
                                f"{self.threat_model!r}")
        if self.budget < 0 or self.text_budget < 0 or self.seeds < 1 or self.attack_seeds < 1:
            raise EraselabError("the budgets must be >= 0 and seeds and attack seeds at least 1")
        if not self.edits and not self.guard:
            raise EraselabError("an audit needs a defence: --edit (one or more, applied together) and/or --guard")
        if self.guard_options and not self.guard:
            raise EraselabError("--guard-option needs a --guard")
        known = [_label(name, variant) for name, variant in ATTACK_COSTS]
        unknown = sorted(set(self.attacks) - set(known))
        if unknown:
            raise EraselabError(f"no such attack to audit with: {', '.join(unknown)} (known: {', '.join(known)})")

    def guard_config(self) -> dict:
        """The guard against the concept (SAFREE takes its toxic concepts as a list, the others one concept), with
        ``guard_options`` over that (SAFREE's phrases, SLD's preset, ...); {} without a guard."""
        from eraselab.guard import GUARDS
        from eraselab.options import accepted

        if not self.guard:
            return {}
        listed = "concepts" in accepted(GUARDS.get(self.guard))
        concept = {"concepts": [self.concept]} if listed else {"concept": self.concept}
        return {"name": self.guard, **concept, **self.guard_options}


@dataclass(frozen=True)
class AttackChoice:
    name: str
    options: dict
    threat_model: str
    estimate: tuple[float, float]  # UNet and text-encoder evaluations, for the whole attack
    status: str  # "run", "over budget", "outside the threat model" or "not requested"

    @property
    def label(self) -> str:
        from eraselab.experiment.config import options_label

        return options_label(self.name, self.options)


def _options(variant: str) -> dict:
    """The attack options of a variant of :data:`ATTACK_COSTS` ("search": the concept vector's genetic search)."""
    return {"search": True} if variant == "search" else {}


def _label(name: str, variant: str) -> str:
    """How tables and ``--attack`` name the variant: ``concept-vector[search=True]``."""
    from eraselab.experiment.config import options_label

    return options_label(name, _options(variant))


def estimate(name: str, variant: str, model: str, prompts: int, steps: int | None = None) -> tuple[float, float]:
    """(UNet, text-encoder) evaluations the attack variant is expected to spend on ``prompts`` prompts of
    ``model`` at ``steps`` sampler steps (default: the model's): its tiny measurement (:data:`ATTACK_COSTS`) scaled
    by the ratio of the bounds its loop puts on it here and on tiny (the bound itself where tiny spent none)."""
    from eraselab.attack import ATTACKS

    entry, options, profile = ATTACKS.get(name), _options(variant), profile_for(model)
    here = entry.evaluations(build(ATTACKS, name, options, profile), prompts, steps or profile.steps)
    tiny = entry.evaluations(build(ATTACKS, name, options, TINY), prompts, TINY.steps)
    measured = ATTACK_COSTS[(name, variant)]
    return tuple(float(m * prompts * h / t if t else h) for m, h, t in zip(measured, here, tiny, strict=True))


def choose_attacks(request: AuditRequest, prompts: int) -> list[AttackChoice]:
    """Every attack variant of :data:`ATTACK_COSTS`, cheapest first, each marked run, not requested, outside the
    threat model or over budget (UNet or text-encoder), for ``prompts`` attacked prompts."""
    from eraselab.attack import ATTACKS

    allowed = AUDIT_THREAT_MODELS[request.threat_model]
    costs = {key: estimate(*key, request.model, prompts, request.steps) for key in ATTACK_COSTS}
    spent, spent_text, out = 0.0, 0.0, []
    for (name, variant), cost in sorted(costs.items(), key=lambda item: item[1]):
        threat = ATTACKS.get(name).threat_model
        if request.attacks and _label(name, variant) not in request.attacks:
            status = "not requested"
        elif threat not in allowed:
            status = "outside the threat model"
        elif spent + cost[0] > request.budget or spent_text + cost[1] > request.text_budget:
            status = "over budget"
        else:
            status, spent, spent_text = "run", spent + cost[0], spent_text + cost[1]
        out.append(AttackChoice(name, _options(variant), threat, cost, status))
    return out
