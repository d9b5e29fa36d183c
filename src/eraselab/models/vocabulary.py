"""Which words a model can be given. CLIP's open BPE vocabulary spells any word; the tiny world's tokenizer is
closed (``closed_vocabulary`` in its config) and eraselab refuses words outside it rather than let them map to
nothing."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path

from eraselab.errors import EraselabError


def closed_vocabulary(pipe) -> bool:
    """Whether ``pipe``'s tokenizer knows only whole words of a fixed list (the tiny world's)."""
    return bool(pipe.tokenizer.init_kwargs.get("closed_vocabulary", False))


def unknown_words(pipe, prompts: Sequence[str]) -> list[str]:
    """Words a closed-vocabulary tokenizer has no whole-word token for; [] for an open vocabulary."""
    if not closed_vocabulary(pipe):
        return []
    from eraselab.models.tiny.world import split_words  # the closed vocabulary's own word split

    vocab = pipe.tokenizer.get_vocab()
    words = {w for prompt in prompts for w in split_words(prompt)}
    return sorted(w for w in words if f"{w}</w>" not in vocab)


def require_known_words(pipe, texts: Sequence[str], message: str) -> None:
    """Refuse ``texts`` that hold words the model has no token for: "``message``: word, word"."""
    unknown = unknown_words(pipe, texts)
    if unknown:
        raise EraselabError(f"{message}: {', '.join(unknown)}")


def clip_tokenizer(directory: Path, bpe: Path | None = None):
    """CLIP's tokenizer built as OpenAI's ``SimpleTokenizer`` builds its vocabulary: the 256 byte symbols, the same
    with ``</w>``, the merges, then the two special tokens. ``bpe``: the merges file ``bpe_simple_vocab_16e6.txt.gz``
    (in the ``open_clip_torch`` wheel), giving Stable Diffusion's 49,408-entry tokenizer; without it, CLIP's
    byte-level base alone (514 entries, no merges: every text tokenises, one token a byte; its first 512 are the
    real vocabulary's first 512 in the same order), for test models that must read any prompt. Written to ``directory``
    (vocab.json, merges.txt)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    merges: list[str] = []
    if bpe is not None:
        with gzip.open(bpe, "rt", encoding="utf-8") as file:
            merges = file.read().split("\n")[1:49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77,
                         pad_token="<|endoftext|>")
