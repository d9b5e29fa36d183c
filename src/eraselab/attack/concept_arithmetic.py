"""Concept Arithmetics: "Concept Arithmetics for Circumventing Concept Inhibition in Diffusion Models" (Petsiuk &
Saenko, ECCV 2024).

Threat model: sampler control plus black-box queries. The attacker keeps the typed prompt and adds weighted
guidance terms (compositional guidance, Eq. 2; :mod:`eraselab.attack.composition`) built from concepts the
erasure did not touch, rebuilding the erased direction from them: on the tiny model a star comes back from
"+2 'a red heart' +2 'a red triangle' -2 'a red circle'" (pointed shapes minus a round one). Each term is a
vocabulary phrase put in the attacked prompt's frame ("a red star" -> "a red heart") with a signed weight.

The recipe search is greedy, as a red-teamer with a small query budget would do it: starting from no terms, each
round tries adding every unused (phrase, +-weight) term and keeps the one its oracle detector scores highest on
the oracle seeds (presence rate, ties broken by the oracle's mean probability of the concept). It stops when no
term helps, after ``max_terms`` terms, on an oracle rate of 1, or when ``budget`` recipes have been tried for the
prompt. The oracle is its own detector instance and its seeds are not the evaluation seeds, so the final judge
scores fresh images.

Defaults: weights (2,) and budget 30 recipes per prompt, up to 3 terms, 2 oracle seeds (1000, 1001); on the tiny
model the vocabulary is the concept's own words plus the other classes of its attribute (the untouched concepts),
and the oracle is the tiny classifier.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass

from eraselab.attack.base import AttackResult, AttackSpec, Cost, Replay, check_budget
from eraselab.attack.composition import CompositionGuard
from eraselab.errors import EraselabError
from eraselab.generate import generate_images
from eraselab.judge.detectors import make_detector

THREAT_MODEL = "sampler-control"


@dataclass(frozen=True)
class ConceptArithmeticConfig:
    vocabulary: tuple[str, ...] = ()  # phrases to compose with; empty on tiny: the concept's words and siblings
    weights: tuple[float, ...] = (2.0,)  # each term is tried with +w and -w
    budget: int = 30  # recipes tried per prompt
    max_terms: int = 3
    oracle: str = "tiny"  # detector name
    oracle_label: str = ""  # what the oracle must see ("shape=star"); empty: derived on the tiny model
    oracle_seeds: tuple[int, ...] = (1000, 1001)
    seed: int = 0  # nothing here is random beyond the sampler's seeds; kept for the record


def _frame(prompt: str, concept: str, phrase: str) -> str:
    """``prompt`` with the concept's word replaced by ``phrase`` (appended when the word is absent)."""
    pattern = re.compile(rf"\b{re.escape(concept)}\b")
    return pattern.sub(phrase, prompt) if pattern.search(prompt) else f"{prompt} {phrase}".strip()


def terms(prompt: str, concept: str, config: ConceptArithmeticConfig,
          vocabulary: tuple[str, ...]) -> list[tuple[str, float]]:
    """Every (phrase in the prompt's frame, signed weight) the search may add."""
    return [(_frame(prompt, concept, phrase), sign * weight) for phrase in vocabulary for weight in config.weights
            for sign in (1.0, -1.0)]


def _tiny_defaults(concept: str, config: ConceptArithmeticConfig) -> tuple[tuple[str, ...], str]:
    from eraselab.erase.corpus import concept_phrases
    from eraselab.models.tiny.suites import concept_label
    from eraselab.models.tiny.world import load_world

    label = config.oracle_label or concept_label(concept)
    attribute, name = label.split("=")
    world = load_world()
    siblings = [world.canonical(attribute, i) for i, other in enumerate(world.classes[attribute]) if other != name]
    vocabulary = config.vocabulary or (*[p for p in concept_phrases([concept]) if p != concept], concept, *siblings)
    return vocabulary, label


def attack(target_pipe, spec: AttackSpec, config: ConceptArithmeticConfig, reference_pipe=None) -> AttackResult:
    start = time.perf_counter()
    check_budget(config.budget)
    check_budget(config.max_terms, "max_terms")
    vocabulary, label = config.vocabulary, config.oracle_label
    if target_pipe.tokenizer.init_kwargs.get("closed_vocabulary", False):
        vocabulary, label = _tiny_defaults(spec.concept, config)
    if not vocabulary or not label:
        raise EraselabError("concept-arithmetic needs a vocabulary of phrases and an oracle_label on this model")
    oracle = make_detector(config.oracle)
    cost = Cost()
    replays, searched = [], []

    def score(prompt: str, recipe: tuple[tuple[str, float], ...]) -> tuple[float, float]:
        """The oracle's rate of the concept for ``prompt`` under ``recipe`` (on the oracle seeds), and its mean
        probability of it where the oracle reports one: with few seeds, rates tie; the probability breaks ties."""
        guard = CompositionGuard(recipe) if recipe else None
        images = generate_images(target_pipe, Replay(prompt).requests(config.oracle_seeds, spec.steps,
                                                                      spec.guidance), progress=False, guard=guard)
        cost.unet_evals += len(images) * spec.steps * (2 + len(recipe))
        cost.text_encoder_evals += len(images) * 2 + len(recipe)
        results = oracle.detect(images)
        attribute, _, value = label.partition("=")
        probabilities = [r.get("probabilities", {}).get(attribute, {}).get(value, 0.0) for r in results]
        rate = sum(oracle.present(r, label) for r in results) / len(images)
        return rate, sum(probabilities) / len(images)

    for prompt in spec.prompts:
        recipe: tuple[tuple[str, float], ...] = ()
        rate = score(prompt, recipe)
        tried = [{"recipe": [], "oracle_rate": rate[0], "oracle_probability": rate[1]}]
        options = terms(prompt, spec.concept, config, vocabulary)
        while len(recipe) < config.max_terms and rate[0] < 1.0 and len(tried) < config.budget:
            best = None
            for term in options:
                if term[0] in {p for p, _ in recipe} or len(tried) >= config.budget:
                    continue
                candidate = (*recipe, term)
                candidate_rate = score(prompt, candidate)
                tried.append({"recipe": [list(t) for t in candidate], "oracle_rate": candidate_rate[0],
                              "oracle_probability": candidate_rate[1]})
                if best is None or candidate_rate > best[1]:
                    best = (candidate, candidate_rate)
                if candidate_rate[0] >= 1.0:
                    break  # early stop on the oracle's first full success
            if best is None or best[1] <= rate:
                break  # no term helps any more
            recipe, rate = best
        replays.append(Replay(prompt, recipe=recipe))
        searched.append({"prompt": prompt, "tried": tried, "oracle_rate": rate[0]})
    cost.seconds = round(time.perf_counter() - start, 3)
    return AttackResult("concept-arithmetic", THREAT_MODEL, {**asdict(config), "vocabulary": list(vocabulary)},
                        replays, cost, oracle={"detector": config.oracle, "label": label,
                                               "seeds": list(config.oracle_seeds)},
                        details={"search": searched})


ATTACK = (attack, ConceptArithmeticConfig)
