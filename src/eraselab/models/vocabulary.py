"""Which words a model can be given. CLIP's open BPE vocabulary spells any word; the tiny world's tokenizer is
closed (``closed_vocabulary`` in its config) and eraselab refuses words outside it rather than let them map to
nothing."""

from __future__ import annotations

from collections.abc import Sequence

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
