"""Write a CLIP BPE tokenizer (``vocab.json`` + ``merges.txt``) whose every tiny-world word is one token.

No library builds a BPE vocabulary from a fixed word list with a guarantee of one token per word (the
``tokenizers`` trainers learn merges from frequencies), so we derive the merges here: run CLIP's BPE on each
word with the merges found so far and, while a word still splits, append the merge of its first two pieces.
Appending at the lowest priority never changes a word that already is a single token, so this reaches a fixed
point. The files load with ``transformers.CLIPTokenizer`` like OpenAI's.
"""

from __future__ import annotations

import itertools
import json
import string
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's byte-pair encoding of one pre-tokenised word (end-of-word marked by ``</w>``)."""
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(itertools.pairwise(parts))]
        rank, _ = min(pairs)
        if rank == 1 << 30:
            break
        pair = next((parts[i], parts[i + 1]) for r, i in pairs if r == rank)
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == pair:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def build_bpe(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A vocabulary (token -> id) and merge list under which each of ``words`` is a single token."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    changed = True
    while changed:
        changed = False
        for word in words:
            parts = _bpe(word, ranks)
            if len(parts) > 1:
                ranks[(parts[0], parts[1])] = len(merges)
                merges.append((parts[0], parts[1]))
                changed = True
    symbols = [*string.ascii_lowercase, *"-,.'!?"]
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += [a + b for a, b in merges if a + b not in tokens]
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}, merges


def write_tokenizer(directory: Path, words: list[str], max_length: int) -> int:
    """Write CLIPTokenizer files for ``words`` into ``directory``; returns the vocabulary size."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_bpe(words)
    (directory / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,  # as in Stable Diffusion 1.x: padding repeats the end-of-text token
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        "closed_vocabulary": True,  # eraselab refuses words outside this vocabulary instead of spelling them
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return len(vocab)
