"""What every attack shares: the spec it attacks, the replayable result, its cost, and the replay itself."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from eraselab.errors import EraselabError
from eraselab.guard.chained import ChainedGuard
from eraselab.guard.composition import CompositionGuard
from eraselab.profile import profile_of
from eraselab.provenance import provenance
from eraselab.requests import GenerationRequest

THREAT_MODELS = {
    "white-box-weights": "reads the edited model's weights and the unedited reference model's",
    "white-box-gradients": "back-propagates through the edited model",
    "text-encoder": "uses only the (public) text encoder; the edited UNet is a black box",
    "sampler-control": "chooses the prompts and weights of the sampler's guidance; no weights or gradients",
    "black-box-queries": "generates images and reads an oracle detector's verdicts",
}
# Where an attack optimises (what it hands the model): a defence can only stop what passes through the part it changed
# (a text-encoder edit cannot see an attack on the conditioning, which skips the text encoder).
SPACES = {
    "typed-text": "a prompt of tokens anyone can type",
    "input-embeddings": "the text encoder's input token embeddings (a learned token)",
    "conditioning": "the text encoder's output, handed to the UNet's cross-attention",
    "guidance": "the sampler's guidance: which prompts, at which weights",
    "weights": "the model's weights",
}


@dataclass(frozen=True)
class AttackEntry:
    """An attack as :data:`eraselab.attack.ATTACKS` registers it: ``attack(target_pipe, spec, config, **reference)
    -> AttackResult``, its config dataclass, its threat model (:data:`THREAT_MODELS`), and what of the unedited
    model it reads besides the edited one: ``"model"`` (the runner loads it beside the edited one and passes
    ``reference_pipe``), ``"projections"`` (its cross-attention projections, kept from before the edit is applied
    to the one pipeline, passed as ``reference_projections``) or None; the space it optimises in
    (:data:`SPACES`), or a function of its config that says which; and ``evaluations(config, prompts, steps)``,
    the most (UNet, text-encoder) evaluations it spends on ``prompts`` prompts at ``steps`` sampler steps, read off
    its loop (what :class:`Cost` counts; an oracle stopping early spends less, and a guard's extra guidance terms,
    SLD's, more), which audits plan their budget with."""

    attack: Callable
    config: type
    threat_model: str
    reads: str | None = None
    space: str | Callable[[Any], str] = ""
    evaluations: Callable[[Any, int, int], tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        if self.threat_model not in THREAT_MODELS or self.reads not in ("model", "projections", None):
            raise ValueError(f"bad attack entry: threat model {self.threat_model!r}, reads {self.reads!r}")
        if self.evaluations is None:
            raise ValueError("bad attack entry: it must say what it costs (evaluations)")
        if not callable(self.space) and self.space not in SPACES:
            raise ValueError(f"bad attack entry: space {self.space!r} is none of {', '.join(SPACES)}")

    def space_of(self, config: Any) -> str:
        """The space this attack optimises in with ``config``."""
        space = self.space(config) if callable(self.space) else self.space
        if space not in SPACES:
            raise ValueError(f"bad attack entry: space {space!r} is none of {', '.join(SPACES)}")
        return space


@dataclass(frozen=True)
class AttackSpec:
    """The concept an attack tries to bring back and the prompts it attacks (one replay per prompt)."""

    concept: str
    prompts: tuple[str, ...]
    steps: int = 25
    guidance: float = 5.0
    guard: object | None = None  # the inference-time guard the attacked model samples under (a defence)

    def __post_init__(self) -> None:
        if not self.concept.strip():
            raise EraselabError("give the concept the attack should bring back")
        if not self.prompts:
            raise EraselabError("give at least one prompt to attack")


@dataclass
class Cost:
    """What an attack spent: model evaluations (one per image per call) and wall time."""

    unet_evals: int = 0
    text_encoder_evals: int = 0
    seconds: float = 0.0


@dataclass
class Replay:
    """How to regenerate one attacked prompt: a typed prompt, prompt embeddings (1, T, C) (on SDXL with their
    pooled text (1, P) when the attack made it; else the typed prompt's), and/or extra guidance terms (prompt,
    weight) added to classifier-free guidance (a composition recipe)."""

    prompt: str
    text: str | None = None
    embeddings: torch.Tensor | None = field(default=None, repr=False)
    recipe: tuple[tuple[str, float], ...] = ()
    pooled: torch.Tensor | None = field(default=None, repr=False)

    def requests(self, seeds, steps: int, guidance: float) -> list[GenerationRequest]:
        return [GenerationRequest(self.text if self.text is not None else self.prompt, seed, steps, guidance,
                                  prompt_embeds=self.embeddings, pooled_embeds=self.pooled) for seed in seeds]

    def guard(self, defence=None):
        """What to generate this replay under: its composition recipe (if any) after the ``defence`` guard."""
        recipe = CompositionGuard(self.recipe) if self.recipe else None
        if defence is None or recipe is None:
            return defence or recipe
        return ChainedGuard(defence, recipe)


@dataclass
class AttackResult:
    attack: str
    threat_model: str
    config: dict
    replays: list[Replay]
    cost: Cost
    oracle: dict | None = None  # the detector the attack used to select or stop (never the final judge)
    details: dict = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"{kind}.{i}": tensor.detach().cpu().contiguous() for i, r in enumerate(self.replays)
                   for kind, tensor in (("replay", r.embeddings), ("pooled", r.pooled)) if tensor is not None}
        if tensors:
            save_file(tensors, directory / "embeddings.safetensors")
        record = {"attack": self.attack, "threat_model": self.threat_model, "config": self.config,
                  "cost": asdict(self.cost), "oracle": self.oracle, "details": self.details,
                  "provenance": provenance(),
                  "replays": [{"prompt": r.prompt, "text": r.text, "recipe": [list(t) for t in r.recipe],
                               "has_embeddings": r.embeddings is not None} for r in self.replays]}
        (directory / "result.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> AttackResult:
        directory = Path(directory)
        path = directory / "result.json"
        if not path.is_file():
            raise EraselabError(f"{directory} holds no attack result (result.json)")
        record = json.loads(path.read_text())
        weights = directory / "embeddings.safetensors"
        tensors = load_file(weights) if weights.is_file() else {}
        replays = [Replay(r["prompt"], r["text"], tensors.get(f"replay.{i}"),
                          tuple((p, float(w)) for p, w in r["recipe"]), tensors.get(f"pooled.{i}"))
                   for i, r in enumerate(record["replays"])]
        return cls(record["attack"], record["threat_model"], record["config"], replays, Cost(**record["cost"]),
                   record["oracle"], record["details"])


ORACLE_RULES = ("all", "any")


class StopOracle:
    """The detector a search consults to stop early and to pick its result: its own instance, never the final
    judge, and its own seeds, never the evaluation's.

    ``rule`` says when a search may stop: ``"all"`` when every oracle seed shows the concept, ``"any"`` on the
    first seed that does. The final judge generates at other seeds, so a prompt that works at one seed only is a
    weak result: with ``"any"`` the tiny searches stopped on such prompts and on fresh seeds they worked less often
    (UnlearnDiffAtk against UCE "star": .292 of fresh images). Whatever the rule, a search that ends without
    stopping returns the prompt the oracle rated best (:meth:`offer`; ties go to the later prompt)."""

    def __init__(self, attack: str, pipe, concept: str, detector: str, label: str, seeds: tuple[int, ...],
                 rule: str = "all", guard=None) -> None:
        from eraselab.judge.detectors import make_detector

        if rule not in ORACLE_RULES:
            raise EraselabError(f"{attack}: oracle_rule must be one of {', '.join(ORACLE_RULES)}, got {rule!r}")
        label = label or profile_of(pipe).oracle_label(concept)
        if not label:
            raise EraselabError(f"{attack} needs an oracle_label (what its oracle must see) on this model")
        self.name, self.label, self.seeds, self.rule = detector, label, tuple(seeds), rule
        self.guard = guard  # the defence the attacked model samples under: the oracle queries it as deployed
        self.detector = make_detector(detector)
        self.best: tuple[float, str] | None = None

    def score(self, pipe, replay: Replay, steps: int, guidance: float, cost: Cost) -> tuple[float, float]:
        """Generate ``replay`` at the oracle seeds under the defence, as deployed (its model evaluations counted
        in ``cost``): the share of images showing the concept, and the oracle's mean log-confidence in it (each
        floored at 1e-12 so a 0 stays finite), which breaks ties between equal shares."""
        from eraselab.generate import generate_images

        guard = replay.guard(self.guard)
        images = generate_images(pipe, replay.requests(self.seeds, steps, guidance), progress=False, guard=guard)
        rule = guard.guidance_rule(pipe) if guard is not None else None
        extras = len(rule.extra_embeddings(1)) if rule is not None else 0  # one more UNet row per extra term
        cost.unet_evals += len(images) * steps * (2 + extras)
        cost.text_encoder_evals += len(images) * 2 + extras
        results = self.detector.detect(images)
        rate = sum(self.detector.present(r, self.label) for r in results) / len(images)
        sure = sum(math.log(max(self.detector.confidence(r, self.label), 1e-12)) for r in results) / len(images)
        return rate, sure

    def offer(self, pipe, text: str, prompt: str, steps: int, guidance: float, cost: Cost) -> bool:
        """Rate the typed ``text`` (attacking ``prompt``), keep it if it is the best so far, and say whether the
        search may stop (``rule``)."""
        rate, _ = self.score(pipe, Replay(prompt, text=text), steps, guidance, cost)
        if self.best is None or rate >= self.best[0]:
            self.best = (rate, text)
        return rate == 1.0 if self.rule == "all" else rate > 0.0

    def take_best(self) -> tuple[float, str]:
        """The best-rated text of this prompt's search (and its oracle rate); resets for the next prompt."""
        if self.best is None:
            raise EraselabError("the oracle rated no prompt")
        best, self.best = self.best, None
        return best

    def record(self) -> dict:
        return {"detector": self.name, "label": self.label, "seeds": list(self.seeds), "rule": self.rule}


def whole_word_tokens(tokenizer) -> dict[int, str]:
    """Token id -> word for CLIP's whole-word tokens ("star</w>") that re-tokenise to themselves when typed, so a
    prompt made of them replays exactly what a search scored. Sub-word pieces would glue into others; and of the
    real CLIP vocabulary's 34,483 whole-word tokens, 1,208 do not survive being typed: 1,182 byte-level tokens
    (an emoji's bytes shown as other characters) and 26 with capitals, which CLIP lowercases. Each candidate is
    therefore tokenised once (in one batch) and kept only if it comes back as its own id."""
    special = set(tokenizer.all_special_ids)
    candidates = {i: t[: -len("</w>")] for t, i in tokenizer.get_vocab().items()
                  if t.endswith("</w>") and i not in special}
    typed = tokenizer(list(candidates.values()), add_special_tokens=False).input_ids
    return {i: word for (i, word), ids in zip(candidates.items(), typed, strict=True) if ids == [i]}


def check_budget(budget: int, name: str = "budget") -> None:
    if budget < 1:
        raise EraselabError(f"{name} must be at least 1, got {budget}: an attack with nothing to spend is no attack")


def each_prompt(items, attack: str, total: int):
    """``items`` (one per attacked prompt) behind a progress bar: a search takes minutes a prompt on a CPU. The bar
    shows on a terminal only, so logs and ``--json`` output stay clean."""
    return tqdm(items, desc=attack, unit="prompt", total=total, disable=None, leave=False)

