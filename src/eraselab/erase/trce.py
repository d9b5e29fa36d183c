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

Defaults: the paper's (lambda 0, keys and values edited, the first [EoT] only, corpus_scale 0.1, preserve_scale
0.1); the corpus must be given for real models (a caption file, one caption per line; the paper uses COCO captions)
and is the tiny world's captions on the tiny model. ``positions`` widens the keys beyond the first [EoT]: the
prompt's last word, the [EoT] padding after it, or both ("word-to-padding", the tiny default).

Why the tiny default differs: the tiny UNet also reads the word's own position and the padding, which stage 1
leaves alone by design (the paper leaves the rest to stage 2). Erasing "star" towards "shape" (seeds 100-111, 72
images; the anchor prompts "a red shape", ... themselves give a star in 0.125 of these images, the floor a perfect
mapping reaches) left a star in 0.250 with the first [EoT] only, 0.181 with "eot-and-padding" and 0.139 with
"word-to-padding" (UCE: 0.153).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from eraselab.erase.artifact import Edit
from eraselab.erase.corpus import check_corpus
from eraselab.erase.cross_attention_edit import check_spec_words, manifest, projections, solve
from eraselab.erase.registry import MethodEntry
from eraselab.erase.spec import EraseSpec
from eraselab.erase.uce import preservation
from eraselab.errors import EraselabError
from eraselab.models.conditioning import encode


@dataclass(frozen=True)
class TrceConfig:
    lamb: float = 0.0  # lambda of the closed form: 0 in stage 1
    erase_scale: float = 1.0
    preserve_scale: float = 0.1
    edit_keys: bool = True
    corpus: str | None = None  # "tiny" or a caption file (one caption per line); required
    corpus_scale: float = 0.1
    positions: str = "first-eot"  # or "last-word-and-first-eot", "eot-and-padding", "word-to-padding"

    tiny_overrides: ClassVar[dict] = {"corpus": "tiny", "positions": "word-to-padding"}

    def check(self) -> None:
        """What can be refused before a model loads: lambda = 0 needs the corpus to span the text space."""
        check_corpus(self.corpus, "TRCE (lambda = 0)", required=True)
    defaults_from: ClassVar[str] = "TRCE paper (Chen et al., ICCV 2025), stage 1: lambda 0, first [EoT], scales 0.1"


POSITIONS = ("first-eot", "last-word-and-first-eot", "eot-and-padding", "word-to-padding")


def key_rows(pipe, prompts: list[str], positions: str) -> list[torch.Tensor]:
    """Per prompt, its rows (k, C) at ``positions``: the first [EoT] embedding; with "last-word-and-first-eot" its
    last word's before it; with "eot-and-padding" every position from the first [EoT] to the end (the padding,
    which CLIP also fills with [EoT] tokens and the UNet also reads); "word-to-padding" both."""
    if positions not in POSITIONS:
        raise EraselabError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    encoded = encode(pipe, prompts)
    rows = []
    for i, (word, eot) in enumerate(zip(encoded.last_word, encoded.first_eot, strict=True)):
        head = [word] if positions in ("last-word-and-first-eot", "word-to-padding") else []
        tail = range(eot, encoded.hidden.shape[1]) if positions in ("eot-and-padding", "word-to-padding") else [eot]
        rows.append(encoded.hidden[i, [*head, *tail]])
    return rows


def paired_rows(pipe, malicious: list[str], safe: list[str], positions: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys c_i and the rows s_i they are mapped to, row for row: each malicious prompt's rows with its safe
    counterpart's, cut to the shorter of the two where the prompts' token lengths differ (the padding tail)."""
    keys, targets = [], []
    for k, s in zip(key_rows(pipe, malicious, positions), key_rows(pipe, safe, positions), strict=True):
        n = min(len(k), len(s))
        keys.append(k[:n])
        targets.append(s[:n])
    return torch.cat(keys), torch.cat(targets)


def erase(pipe, spec: EraseSpec, config: TrceConfig) -> Edit:
    """Stage 1 of TRCE: map each malicious prompt's first [EoT] embedding (and the other ``positions``) to its safe
    counterpart's."""
    start = time.perf_counter()
    config.check()
    pairs = check_spec_words(pipe, spec)
    keys, safe = paired_rows(pipe, [t for t, _ in pairs], [a or " " for _, a in pairs], config.positions)  # c_i, s_i
    preserve, stats = preservation(pipe, spec, config.corpus, keep_empty=False)  # the reference keeps its corpus only
    tensors = solve(projections(pipe, config.edit_keys), keys, safe, preserve, config.preserve_scale,  # Eq. 4-5
                    stats, config.corpus_scale, config.lamb, config.erase_scale)
    return Edit(tensors, manifest("trce", config, spec, pipe, start, stage=1))


METHOD = MethodEntry(erase, TrceConfig)
