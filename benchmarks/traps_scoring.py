"""Trap scoring speed: all membership scores of a batch vs. one plain forward pass over the same batch.

Every score (loss, zlib ratio, Min-K%, Min-K%++) comes from one forward pass of the suspect model plus the
per-token statistics of its next-token distributions; the reference-ratio score adds one forward pass of the
reference model, timed separately. Prints the time ratio (goal <= 1.2) and the seconds for 1,000 traps of
100 tokens, on the trap world's default architecture (or --model DIR).

    python benchmarks/traps_scoring.py [--traps 1000] [--length 100] [--model DIR]
"""

from __future__ import annotations

import argparse
import time

import torch

import _quiet  # noqa: F401  (quiets the libraries before they load)
from eraselab.traps.lm import LmRecipe, load_lm, make_model
from eraselab.traps.scores import SCORES
from eraselab.traps.scores.stats import token_stats


def best_of_interleaved(repeats: int, *works) -> list[float]:
    """The best time of each piece of work, the pieces alternating so that machine noise hits both alike."""
    best = [float("inf")] * len(works)
    for _ in range(repeats):
        for index, work in enumerate(works):
            start = time.perf_counter()
            work()
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traps", type=int, default=1000)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--model", default=None, help="a causal LM directory (default: the trap-world architecture)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_lm(args.model)[0] if args.model else make_model(2048, LmRecipe()).eval()
    vocab = model.config.vocab_size
    sequences = torch.randint(1, vocab, (args.traps, args.length)).tolist()
    texts = [" ".join(map(str, s)) for s in sequences]
    begin = 0

    @torch.no_grad()
    def plain() -> None:
        for start in range(0, args.traps, args.batch):
            rows = torch.tensor([[begin, *s] for s in sequences[start:start + args.batch]])
            model(input_ids=rows, attention_mask=torch.ones_like(rows)).logits  # noqa: B018

    def ours() -> None:
        stats = token_stats(model, sequences, texts, begin, batch_size=args.batch)
        for name in SCORES.names():
            if not SCORES.get(name).needs_reference:
                SCORES.get(name).compute(stats, None)

    plain()  # warm-up
    plain_s, ours_s = best_of_interleaved(args.repeats, plain, ours)
    print(f"{args.traps} traps x {args.length} tokens, batch {args.batch}, {torch.get_num_threads()} threads")
    print(f"plain forward pass:           {plain_s:.3f} s")
    print(f"eraselab, all suspect scores: {ours_s:.3f} s  ({ours_s / plain_s:.2f}x the forward pass)")
    print("reference-ratio adds one forward pass of the reference model: about the plain figure again")


if __name__ == "__main__":
    main()
