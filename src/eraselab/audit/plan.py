"""What an audit runs: the erasure grid of one concept (efficacy, generality, specificity against the unedited
model, with the pinned judge) and the attacks the chosen threat model allows, cheapest first, within a budget.

Threat models (what the auditor assumes an adversary holds), from strongest to weakest:

- ``white-box``: the released weights; every attack (:data:`eraselab.attack.base.THREAT_MODELS`) applies;
- ``grey-box``: the public text encoder and control of the sampler (a local copy of the pipeline without the
  edited weights' internals): text-encoder, sampler-control and black-box-query attacks;
- ``black-box``: typed prompts and the images that come back: black-box-query attacks only.

Attacks are ordered by their cost measured on the tiny model at the attack table's protocol (UNet evaluations per
prompt x seed, worst case over the defences of ``benchmarks/attack_table.py``; text-encoder evaluations break
ties), and taken while their estimated total fits the budget; the card reports the cost each one really took.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eraselab.errors import EraselabError

AUDIT_THREAT_MODELS = {
    "white-box": ("white-box-weights", "white-box-gradients", "text-encoder", "sampler-control", "black-box-queries"),
    "grey-box": ("text-encoder", "sampler-control", "black-box-queries"),
    "black-box": ("black-box-queries",),
}
# (attack, options) -> (UNet evals, text-encoder evals) per prompt x seed, the most any defence of the attack
# table cost (`python benchmarks/attack_table.py --concept star`, 6 prompts x 4 seeds, tiny defaults).
ATTACK_COSTS: dict[tuple[str, str], tuple[float, float]] = {
    ("embedding-recovery", ""): (0, 0.25),
    ("concept-vector", ""): (0, 0.92),
    ("concept-vector", "search"): (0, 497),
    ("textual-inversion", ""): (100, 50),
    ("p4d", ""): (175, 31),
    ("unlearndiff", ""): (537.5, 45),
    ("concept-arithmetic", ""): (6187.5, 180),
}
DEFAULT_BUDGET = 20_000  # UNet evaluations: every attack but concept arithmetic at 6 prompts x 4 seeds on tiny


@dataclass(frozen=True)
class AuditRequest:
    """One audit: the defended model (``edits`` applied together, under ``guard``), the concept and the protocol."""

    model: str
    concept: str
    edits: tuple[str, ...] = ()
    guard: str | None = None
    suite: str | None = None  # the concept's prompts (tiny: the world's own suites)
    preserve_suites: tuple[str, ...] = ()  # prompts whose content must survive (tiny: the world's)
    judge: str | None = None  # detector name (tiny: the tiny classifier)
    judge_options: dict = field(default_factory=dict)
    label: str | None = None  # what the judge looks for (tiny: the concept's class)
    threat_model: str = "white-box"
    budget: int = DEFAULT_BUDGET  # UNet evaluations for the attacks
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
        if self.budget < 0 or self.seeds < 1 or self.attack_seeds < 1:
            raise EraselabError("the budget must be >= 0 and seeds and attack seeds at least 1")
        if not self.edits and not self.guard:
            raise EraselabError("an audit needs a defence: --edit (one or more, applied together) and/or --guard")
        known = [_label(name, variant) for name, variant in ATTACK_COSTS]
        unknown = sorted(set(self.attacks) - set(known))
        if unknown:
            raise EraselabError(f"no such attack to audit with: {', '.join(unknown)} (known: {', '.join(known)})")


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


def choose_attacks(request: AuditRequest, prompts: int) -> list[AttackChoice]:
    """Every attack variant of :data:`ATTACK_COSTS`, cheapest first, each marked run, not requested, outside the
    threat model or over budget, for ``prompts`` attacked prompts x the request's attack seeds."""
    from eraselab.attack import ATTACKS

    allowed = AUDIT_THREAT_MODELS[request.threat_model]
    spent, out = 0.0, []
    for (name, variant), (unet, text) in sorted(ATTACK_COSTS.items(), key=lambda item: item[1]):
        threat = ATTACKS.get(name).threat_model
        n = prompts * request.attack_seeds
        estimate = (unet * n, text * n)
        if request.attacks and _label(name, variant) not in request.attacks:
            status = "not requested"
        elif threat not in allowed:
            status = "outside the threat model"
        elif spent + estimate[0] > request.budget:
            status = "over budget"
        else:
            status, spent = "run", spent + estimate[0]
        out.append(AttackChoice(name, _options(variant), threat, estimate, status))
    return out
