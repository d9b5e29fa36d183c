"""Concept vector: Ring-A-Bell (Tsai, Hsu, Xie, Lin, Chen, Li, Chen, Yu, Huang; ICLR 2024), Sec. 3.2.

Threat model: text encoder only; the edited UNet is a black box. The concept vector is the mean difference of
full text-encoder outputs over prompt pairs with and without the concept,
    v = (1/N) sum_i [E(p_i with c) - E(p_i without c)]                                     (Eq. 3)
and the attack conditions on E(p) + eta v (Eq. 4), replayed as prompt embeddings. No UNet evaluation.

With ``search``, a genetic algorithm looks for a *typeable* prompt of K tokens whose encoding is closest to that
target (Sec. 3.3): fitness -|E(tokens) - (E(p) + eta v)|^2 over every position, a population of random token
sequences of whole-word tokens (so the typed prompt re-tokenises to what was scored), the fitter half kept each
generation, single-point crossover of two kept parents and per-token mutation. Still text-encoder only:
population + generations x (population - kept) encoder rows, a generation's children encoded in calls of at most
``encode_batch`` rows (activations grow with a call's rows: through SDXL's two encoders calls of 64 peaked 1.8 GB
above the loaded encoders, one call of the population's 200 3.7 GB; ``benchmarks/sd_scale.py``), no UNet.

Defaults: eta = 3.0, and for the search K = 16 tokens, population 200, 3,000 generations, mutation rate 0.25
(the paper's for nudity on SD 1.4); on the tiny model (``tiny_overrides``) K = 6, population 64, 60 generations.
Pairs come from templates with the concept and with the anchor in its place (for the tiny model the world's
prompt forms, "a red star" / "a red shape"). E is the conditioning the UNet reads: on SDXL both encoders' outputs
side by side (the pooled embedding, outside cross-attention, is the typed prompt's when E(p) + eta v is replayed).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from eraselab.attack.base import AttackEntry, AttackResult, AttackSpec, Cost, Replay, check_budget, whole_word_tokens
from eraselab.models.conditioning import encode, encode_context
from eraselab.models.vocabulary import require_known_words
from eraselab.profile import profile_of

THREAT_MODEL = "text-encoder"
GENERIC_TEMPLATES = ("{}", "a photo of {}", "a painting of {}", "an image of {}", "a picture of {}")


@dataclass(frozen=True)
class ConceptVectorConfig:
    strength: float = 3.0  # eta of Eq. 4
    anchor: str = ""  # what replaces the concept in the "without" prompts
    templates: tuple[str, ...] = ()  # empty: the tiny world's forms on the tiny model, GENERIC_TEMPLATES otherwise
    search: bool = False  # the genetic search for a typeable prompt
    tokens: int = 16  # K
    population: int = 200
    generations: int = 3000
    mutation_rate: float = 0.25
    seed: int = 0
    encode_batch: int = 64  # encoder rows per call; only float rounding depends on it (CPU kernels by shape)

    tiny_overrides: ClassVar[dict] = {"tokens": 6, "population": 64, "generations": 60}


def genetic_search(pipe, target: torch.Tensor, config: ConceptVectorConfig) -> tuple[str, float, int]:
    """The K-token prompt whose encoding is closest to ``target`` (T, C): (text, squared distance, encoder calls)."""
    check_budget(config.population, "population")
    check_budget(config.generations, "generations")
    check_budget(config.tokens, "tokens")
    check_budget(config.encode_batch, "encode_batch")
    words = whole_word_tokens(pipe.tokenizer)
    vocabulary = torch.tensor(sorted(words))
    g = torch.Generator().manual_seed(config.seed)
    population = vocabulary[torch.randint(len(vocabulary), (config.population, config.tokens), generator=g)]

    def text(member: torch.Tensor) -> str:  # whole-word tokens: the typed text tokenises back to ``member``
        return " ".join(words[int(i)] for i in member)

    def fitness(members: torch.Tensor) -> torch.Tensor:
        return -squared_distances(pipe, [text(m) for m in members], target, config.encode_batch)

    scores, calls = fitness(population), config.population
    # Each generation encodes its children (population - population // 2 rows), ``encode_batch`` rows a call:
    # at SD-1.4 size and the paper's budget that is 300,200 encoder rows a prompt, hours on a GPU and about a day
    # on a 2-core CPU (``benchmarks/sd_scale.py`` prints the projection for the machine it runs on).
    for _ in tqdm(range(config.generations), desc="ring-a-bell search", unit="gen", disable=None, leave=False):
        order = scores.argsort(descending=True)
        keep = population[order[: config.population // 2]]  # selection: the fitter half
        mothers = keep[torch.randint(len(keep), (config.population - len(keep),), generator=g)]
        fathers = keep[torch.randint(len(keep), (config.population - len(keep),), generator=g)]
        cut = torch.randint(1, config.tokens + 1, (len(mothers), 1), generator=g)
        children = torch.where(torch.arange(config.tokens)[None] < cut, mothers, fathers)  # single-point crossover
        mutate = torch.rand(children.shape, generator=g) < config.mutation_rate
        children = torch.where(mutate, vocabulary[torch.randint(len(vocabulary), children.shape, generator=g)],
                               children)
        population = torch.cat([keep, children])
        scores = torch.cat([scores[order[: len(keep)]], fitness(children)])
        calls += len(children)
    best = int(scores.argmax())
    return text(population[best]), float(-scores[best]), calls


def squared_distances(pipe, prompts: list[str], target: torch.Tensor, batch: int) -> torch.Tensor:
    """|E(p) - target|^2 over every position for each prompt, E the encoding the UNet reads (SDXL: both
    encoders'), computed ``batch`` prompts a call."""
    return torch.cat([((encode_context(pipe, prompts[i:i + batch]).double().cpu() - target) ** 2).sum(dim=(1, 2))
                      for i in range(0, len(prompts), batch)])


def concept_vector(pipe, concept: str, anchor: str, templates: tuple[str, ...]):
    """v of Eq. 3, (T, C) float64, and the number of prompt pairs it averages."""
    pairs = [(" ".join(t.format(concept).split()), " ".join(t.format(anchor).split())) for t in templates]
    require_known_words(pipe, [p for pair in pairs for p in pair],
                        "concept-vector prompts have words outside the model's vocabulary")
    with_concept = encode(pipe, [w for w, _ in pairs]).hidden
    without = encode(pipe, [w for _, w in pairs]).hidden
    return (with_concept - without).mean(0), len(pairs)  # Eq. 3


def attack(target_pipe, spec: AttackSpec, config: ConceptVectorConfig, reference_pipe=None) -> AttackResult:
    start = time.perf_counter()
    templates = config.templates or profile_of(target_pipe).erase_templates(spec.concept) or GENERIC_TEMPLATES
    vector, n_pairs = concept_vector(target_pipe, spec.concept, config.anchor, tuple(templates))
    hidden = encode(target_pipe, list(spec.prompts)).hidden
    cost = Cost(text_encoder_evals=2 * n_pairs + len(spec.prompts))
    replays, found = [], []
    for prompt, rows in zip(spec.prompts, hidden, strict=True):
        target = rows + config.strength * vector  # Eq. 4
        if config.search:
            text, distance, calls = genetic_search(target_pipe, target, config)
            cost.text_encoder_evals += calls
            replays.append(Replay(prompt, text=text))
            found.append({"prompt": prompt, "text": text, "distance": distance})
        else:
            replays.append(Replay(prompt, embeddings=target[None].float()))
    cost.seconds = round(time.perf_counter() - start, 4)
    return AttackResult("concept-vector", THREAT_MODEL, {**asdict(config), "templates": list(templates)}, replays,
                        cost, details={"pairs": n_pairs, "vector_norm": float(vector.norm()), "search": found})


def evaluations(config: ConceptVectorConfig, prompts: int, steps: int) -> tuple[int, int]:
    """No UNet evaluation; the prompts' encodings, the vector's (two per template pair; 16 pairs assumed when the
    templates come from the model: the tiny world's star makes 8, GENERIC_TEMPLATES 5), and with ``search`` each
    prompt's genetic search (the first population, then the children of every generation)."""
    pairs = len(config.templates) or 16
    search = config.population + config.generations * (config.population - config.population // 2)
    return 0, prompts * (1 + (search if config.search else 0)) + 2 * pairs


ATTACK = AttackEntry(attack, ConceptVectorConfig, THREAT_MODEL, reads=None,
                     space=lambda config: "typed-text" if config.search else "conditioning", evaluations=evaluations)
