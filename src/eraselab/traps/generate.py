"""Generate trap sequences and their secret siblings (Meeus et al., "Copyright Traps for Large Language
Models", ICML 2024, Sec. 3.1).

Traps are sampled from a reference causal LM; a temperature sweep lands them in a perplexity band measured
under that same model (the paper shows higher-perplexity traps are memorised more). A sequence is kept only if
its decoded text re-encodes to the same tokens (what is published is text: the tokens must survive the trip)
and if it is not a near-duplicate of one already kept (token-set Jaccard above 0.2, as in the paper).

What makes the later test exact: all ``count * (1 + siblings)`` sequences come from the same process, and only
then are the roles drawn, uniformly at random (seeded): ``count`` of them are published, and each gets
``siblings`` of the others as its never-published controls.

Example (CLI): ``eraselab traps generate --reference-model DIR --length 64 --ppl-band 8:16 --count 20
--siblings 19 --seed 0 --out traps.jsonl``
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from eraselab.errors import EraselabError
from eraselab.traps.evidence import MIN_SIBLINGS, MIN_SIBLINGS_PER_TRAP
from eraselab.traps.scores.stats import token_stats

TEMPERATURES = (0.5, 0.7, 0.85, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0, 2.5, 3.0)


@dataclass(frozen=True)
class TrapRequest:
    """What to generate. The paper's traps: 25, 50 or 100 tokens; perplexity bands [1,10], [11,100],
    [101,1000] under LLaMA-2 7B; the tiny world uses bands measured on its own reference model."""

    length: int
    ppl_band: tuple[float, float]
    count: int
    siblings: int
    seed: int = 0
    group: str = ""
    max_jaccard: float = 0.2
    batch: int = 64
    rounds: int = 40
    temperatures: tuple[float, ...] = TEMPERATURES

    def __post_init__(self) -> None:
        low, high = self.ppl_band
        if self.length < 1 or self.count < 1:
            raise EraselabError("--length and --count must be at least 1")
        if not 0 < low < high:
            raise EraselabError(f"--ppl-band must be LO:HI with 0 < LO < HI, got {low}:{high}")
        if self.count * self.siblings < MIN_SIBLINGS:
            raise EraselabError(f"{self.count} traps x {self.siblings} siblings gives {self.count * self.siblings} "
                                f"controls in all; at least {MIN_SIBLINGS} are needed for a meaningful test")
        if self.siblings < MIN_SIBLINGS_PER_TRAP:  # detect refuses such a key: say so before anything is published
            raise EraselabError(f"--siblings {self.siblings}: every published trap needs at least "
                                f"{MIN_SIBLINGS_PER_TRAP} siblings (its p-value is never below 1/(K+1))")


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of the tokenizer's vocabulary and rules: detection must use the tokenizer the traps were made with."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b)


@torch.no_grad()
def _sample(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, length: int, temperature: float,
            batch: int, seed: int) -> list[list[int]]:
    begin = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    start = torch.full((batch, 1), begin, dtype=torch.long, device=next(model.parameters()).device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model.generate(start, attention_mask=torch.ones_like(start), do_sample=True, temperature=temperature,
                             top_k=0, top_p=1.0, max_new_tokens=length, min_new_tokens=length,
                             suppress_tokens=[tokenizer.eos_token_id], pad_token_id=tokenizer.eos_token_id)
    return out[:, 1:].tolist()


def perplexities(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sequences: list[list[int]]) -> list[float]:
    begin = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    stats = token_stats(model, sequences, [""] * len(sequences), begin)
    return (-stats.mean_log_likelihood()).exp().tolist()


def generate_traps(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, request: TrapRequest,
                   reference_name: str = "", progress: bool = True) -> list[dict]:
    """Sample, filter and assign roles; returns one record per sequence (published first, then siblings)."""
    needed = request.count * (1 + request.siblings)
    low, high = request.ppl_band
    kept: list[tuple[list[int], str, float, float]] = []
    kept_sets: list[set[int]] = []
    reached: list[float] = []
    yields = {temperature: 0 for temperature in request.temperatures}
    bar = tqdm(total=needed, desc=f"traps {request.group or request.length}", disable=not progress)
    # 1. Temperature sweep: the first round probes every temperature; later rounds sample the two that kept the
    #    most sequences so far, so the budget goes where the band is.
    for round_index in range(request.rounds):
        if round_index == 0:
            sweep = list(request.temperatures)
        else:
            sweep = [t for t in sorted(yields, key=yields.get, reverse=True)[:2] if yields[t] > 0]
        for t_index, temperature in enumerate(sweep):
            seed = request.seed * 1_000_003 + round_index * 1_009 + t_index
            candidates = _sample(model, tokenizer, request.length, temperature, request.batch, seed)
            ppls = perplexities(model, tokenizer, candidates)
            reached.extend(ppls)
            for ids, ppl in zip(candidates, ppls, strict=True):
                if not low <= ppl <= high:
                    continue
                # 2. Round trip: the published text (printable, no outer spaces) re-encodes to the same tokens.
                text = tokenizer.decode(ids)
                printable = text.isprintable() and text == text.strip()
                if not printable or tokenizer(text, add_special_tokens=False).input_ids != ids:
                    continue
                # 3. Near-duplicates: token-set Jaccard above the threshold with any kept sequence.
                token_set = set(ids)
                if any(jaccard(token_set, other) > request.max_jaccard for other in kept_sets):
                    continue
                kept.append((ids, text, ppl, temperature))
                kept_sets.append(token_set)
                yields[temperature] += 1
                bar.update()
                if len(kept) == needed:
                    break
            if len(kept) == needed:
                break
        if len(kept) == needed or not sweep:
            break
    bar.close()
    if len(kept) < needed:
        raise EraselabError(
            f"perplexity band {low:g}:{high:g} not filled: sampled perplexities reached {min(reached):.1f} to "
            f"{max(reached):.1f} over temperatures {request.temperatures[0]:g} to {request.temperatures[-1]:g}; "
            f"{len(kept)} of {needed} sequences kept after the round-trip and duplicate filters")
    # 4. Roles, drawn only now and uniformly: this is what makes the rank test exact.
    random.Random(request.seed).shuffle(kept)
    fingerprint = tokenizer_fingerprint(tokenizer)
    group = request.group or f"len{request.length}-ppl{low:g}-{high:g}"
    records = []
    for index, (ids, text, ppl, temperature) in enumerate(kept):
        owner = index if index < request.count else (index - request.count) // request.siblings
        role = "published" if index < request.count else "sibling"
        records.append({"id": f"{group}-{index:04d}", "role": role, "trap": f"{group}-{owner:04d}", "group": group,
                        "text": text, "token_ids": ids, "length": request.length, "perplexity": ppl,
                        "temperature": temperature, "ppl_band": [low, high], "seed": request.seed,
                        "tokenizer": fingerprint, "reference_model": reference_name})
    return records
