"""TRCE: Towards Reliable Malicious Concept Erasure in Text-to-Image Diffusion Models (Chen, Zhang, Wang, Li,
Liu, Wang; ICCV 2025). Stage 1: the closed-form cross-attention edit. (Stage 2, the contrastive fine-tuning of
the early denoising steps, lands with its own issue; its config joins :class:`TrceConfig` then.)

TRCE observes that CLIP's causal text encoder gathers a prompt's meaning into its first [EoT] token, so an
implicit or paraphrased mention of a concept still shows up there. Stage 1 therefore maps the first-[EoT]
embedding of every malicious prompt (each concept in each template) to the first-[EoT] embedding of its safe
counterpart (the same template with the anchor), with lambda = 0 and the preservation statistics of a caption
corpus holding everything else in place (the paper's Eq. 4-5, solved by
:func:`eraselab.erase.closed_form.closed_form_edit`):
    W = (sum_i W0 s_i c_i^T + W0 K) (sum_i c_i c_i^T + K)^-1,  K = s_p sum_p c_p c_p^T + s_c E,
where c_i is a malicious prompt's first [EoT] embedding, s_i the safe counterpart's, and E the corpus's second
moment (:mod:`eraselab.erase.corpus`). lambda = 0 needs K to span the text space, so a corpus is required.

Defaults: lambda 0, keys and values edited, corpus_scale 0.1, preserve_scale 0.1; the corpus is the tiny world's
captions on the tiny model and must be given (a caption file, one caption per line; the paper uses COCO captions)
for real models.

On the tiny model stage 1 leaves part of a shape: erasing "star" towards "shape", 0.125 of 72 images still show a
star with the first [EoT] (red and "outlined" go to 0), 0.17 with "last-word-and-first-eot" and 0.21 with
"eot-and-padding" (24 images): the tiny UNet also reads the word's own position and the padding, which stage 1
leaves alone by design (the paper leaves the rest to stage 2).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from eraselab.erase.artifact import Edit
from eraselab.erase.cross_attention_edit import check_spec_words, encode, manifest, projections, solve
from eraselab.erase.spec import EraseSpec
from eraselab.erase.uce import preservation
from eraselab.errors import EraselabError


@dataclass(frozen=True)
class TrceConfig:
    lamb: float = 0.0  # lambda of the closed form: 0 in stage 1
    erase_scale: float = 1.0
    preserve_scale: float = 0.1
    edit_keys: bool = True
    corpus: str | None = None  # "tiny" or a caption file (one caption per line); required
    corpus_scale: float = 0.1
    positions: str = "first-eot"  # or "last-word-and-first-eot", "eot-and-padding"

    tiny_overrides: ClassVar[dict] = {"corpus": "tiny"}


POSITIONS = ("first-eot", "last-word-and-first-eot", "eot-and-padding")


def key_rows(pipe, prompts: list[str], positions: str) -> torch.Tensor:
    """The first [EoT] embedding of each prompt, (n, C); with "last-word-and-first-eot" its last word's too, with
    "eot-and-padding" every position from the first [EoT] to the end (the padding, which CLIP also fills with
    [EoT] tokens and the UNet also reads)."""
    if positions not in POSITIONS:
        raise EraselabError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    encoded = encode(pipe, prompts)
    rows = []
    for i, (word, eot) in enumerate(zip(encoded.last_word, encoded.first_eot, strict=True)):
        if positions == "last-word-and-first-eot":
            rows.append(encoded.hidden[i, word])
        if positions == "eot-and-padding":
            rows.extend(encoded.hidden[i, eot:])
        else:
            rows.append(encoded.hidden[i, eot])
    return torch.stack(rows)


def erase(pipe, spec: EraseSpec, config: TrceConfig) -> Edit:
    """Stage 1 of TRCE: map each malicious prompt's first [EoT] embedding to its safe counterpart's."""
    start = time.perf_counter()
    if not config.corpus:
        raise EraselabError("TRCE needs a caption corpus for its preservation statistics (lambda = 0): set "
                            "corpus to 'tiny' for the tiny model or to a caption file")
    pairs = check_spec_words(pipe, spec)
    keys = key_rows(pipe, [t for t, _ in pairs], config.positions)  # c_i
    safe = key_rows(pipe, [a or " " for _, a in pairs], config.positions)  # s_i
    preserve, stats = preservation(pipe, spec, config.corpus, keep_empty=False)  # the reference keeps its corpus only
    tensors = solve(projections(pipe, config.edit_keys), keys, safe, preserve, config.preserve_scale,  # Eq. 4-5
                    stats, config.corpus_scale, config.lamb, config.erase_scale)
    return Edit(tensors, manifest("trce", config, spec, pipe, start, stage=1))


METHOD = (erase, TrceConfig)
