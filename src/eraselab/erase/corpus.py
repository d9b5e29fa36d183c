"""Preservation statistics over a caption corpus: E = (1/N) sum_captions sum_positions e e^T.

The closed-form edits keep the outputs of every embedding in this second moment where they were (the s_c E
term of :mod:`eraselab.erase.closed_form`). The corpus is the tiny world's captions for the tiny model
(``"tiny"``), or a text file with one caption per line for a real model (the papers use COCO or LAION
captions). Captions that name a concept being erased are left out, or the statistics would preserve it.

E depends only on the text encoder and the captions, so it is cached on disk, in safetensors, under
``$ERASELAB_CACHE`` (default ``~/.cache/eraselab``), keyed by both: on Stable Diffusion the text encoder
pass over ten thousand captions takes minutes on a CPU, and every erasure of every concept reuses it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from eraselab.errors import EraselabError
from eraselab.models.fingerprint import pipeline_fingerprint

TINY_CORPUS_SIZE = 2000


def cache_directory() -> Path:
    return Path(os.environ.get("ERASELAB_CACHE", Path.home() / ".cache" / "eraselab"))


def _tiny_captions(seed: int = 0) -> list[str]:
    from eraselab.models.tiny.world import load_world

    world = load_world()
    rng = np.random.default_rng(seed)
    attrs = world.sample_attributes(rng, TINY_CORPUS_SIZE)
    return [world.caption(world.attributes_of(attrs, i), rng, "all").text for i in range(TINY_CORPUS_SIZE)]


def concept_phrases(concepts: list[str]) -> list[str]:
    """Every phrase that names one of ``concepts``: the concept itself and, for tiny-world concepts, all its
    paraphrases (training and held-out)."""
    from eraselab.models.tiny.world import load_world

    world, phrases = load_world(), set(concepts)
    for concept in concepts:
        for attribute, names in world.classes.items():
            if concept in names:
                phrases.update(world.words_for(attribute, names.index(concept), "all"))
            for i in range(len(names)):  # a paraphrase given as the concept ("pentagram") names its class too
                if concept in world.words_for(attribute, i, "all"):
                    phrases.update(world.words_for(attribute, i, "all"))
    return sorted(phrases)


def check_corpus(source: str | None, method: str, required: bool = False) -> None:
    """Refuse a missing corpus where ``method`` requires one, or a corpus file that does not exist (before any
    model is loaded)."""
    if source is None or source == "":
        if required:
            raise EraselabError(f"{method} needs a caption corpus for its preservation statistics: set corpus to "
                                "'tiny' for the tiny model or to a caption file (one caption per line)")
        return
    if source != "tiny" and not Path(source).is_file():
        raise EraselabError(f"caption corpus {source!r} is neither 'tiny' nor a text file")


def load_captions(source: str, exclude: list[str]) -> list[str]:
    """The corpus ``source`` ("tiny" or a text file, one caption per line) without captions naming ``exclude``."""
    check_corpus(source, "the caption corpus")
    if source == "tiny":
        captions = _tiny_captions()
    else:
        text = Path(source).read_text(encoding="utf-8")
        captions = [line.strip() for line in text.splitlines() if line.strip()]
    patterns = [re.compile(rf"\b{re.escape(p.lower())}\b") for p in exclude if p.strip()]
    kept = [c for c in captions if not any(p.search(c.lower()) for p in patterns)]
    if not kept:
        raise EraselabError(f"caption corpus {source!r} has no caption left after removing those that name "
                            f"{', '.join(exclude)}")
    return kept


def corpus_statistics(pipe, captions: list[str], batch_size: int = 256) -> torch.Tensor:
    """E = (1/N) sum over captions and every token position (padding included, as the UNet reads all of them)
    of e e^T, float64 (C, C); read from the cache when the same encoder has seen the same captions."""
    digest = hashlib.sha256(pipeline_fingerprint(pipe, ("text_encoder", "text_encoder_2")).encode())
    digest.update("\n".join(captions).encode())
    cached = cache_directory() / "corpus-stats" / f"{digest.hexdigest()[:32]}.safetensors"
    if cached.is_file():
        return load_file(cached)["second_moment"]
    from eraselab.models.conditioning import encode

    total = None
    for start in range(0, len(captions), batch_size):
        hidden = encode(pipe, captions[start:start + batch_size]).hidden
        rows = hidden.reshape(-1, hidden.shape[-1])
        moment = rows.T @ rows  # sum_e e e^T
        total = moment if total is None else total + moment
    stats = total / len(captions)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".partial")
    save_file({"second_moment": stats.contiguous()}, partial)
    partial.replace(cached)  # atomic: a killed run never leaves a half-written cache entry
    return stats
