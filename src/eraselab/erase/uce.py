"""UCE: Unified Concept Editing in Diffusion Models (Gandikota, Orgad, Belinkov, Materzynska, Bau; WACV 2024).

Erasure edits the key and value projections of every cross-attention layer in closed form (Eq. 7 of the paper,
solved by :func:`eraselab.erase.closed_form.closed_form_edit`): the text-encoder outputs c_i of each target
prompt are mapped to the outputs the same layer gives the anchor prompt, v*_i = W0 c_anchor ("replace"), while
the outputs for preserved prompts stay W0 c_p. The empty prompt is always among them, as in the reference
scripts: classifier-free guidance subtracts its prediction at every step.

Which token positions are keys is an option, because the two reference versions differ: ``word-to-eot`` (the
reference erasing script: from the concept's last token through the [EoT] padding, aligned position by
position with the anchor's) or ``last-word`` (the concept's last token only, as Eq. 7 is written). The reference
templates always end with the concept, so it takes the prompt's last word; here the concept's own last token is
located (the template's text before the concept, plus the concept), so that a concept inside a prompt ("a red
star" when erasing "red") is keyed at "red", not at "star".

Defaults are the UCE reference erasing script's for Stable Diffusion 1.4 (``train-scripts/train_erase.py`` of
rohitgandikota/unified-concept-editing, commit bd5fb51; recorded in the manifest as ``defaults_from``): lamb 0.5
(passed to ``edit_model`` by its ``__main__``; the function's own default of 0.1 is never used by the script),
erase_scale 1 (its ``--erase_scale``), and preserve_scale ``None``, resolved as that script does when
``--preserve_scale`` is not given: max(0.1, 1 / (1 + number of preserved prompts)), so 1 with nothing but the empty
prompt preserved (the script's earlier version, commit 18287f6, used a fixed 0.1). Keys and values are edited.
RECE's nudity run uses lamb 0.1 and preserve_scale 0.1 (:mod:`eraselab.erase.rece`). ``corpus`` adds
preservation statistics over a caption corpus (:mod:`eraselab.erase.corpus`; off by default, as in the paper; on
for the tiny model, whose measured settings are ``tiny_overrides``).

>>> from eraselab.models import load_pipeline
>>> pipe = load_pipeline("tiny")
>>> edit = erase(pipe, EraseSpec(("star",)), UceConfig())
>>> edit.manifest["method"], len(edit.tensors)
('uce', 14)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from eraselab.erase.artifact import Edit
from eraselab.erase.corpus import check_corpus, concept_phrases, corpus_statistics, load_captions
from eraselab.erase.cross_attention_edit import check_spec_words, manifest, projections, solve
from eraselab.erase.registry import MethodEntry
from eraselab.erase.spec import EraseSpec
from eraselab.errors import EraselabError
from eraselab.models.conditioning import Encoded, encode

POSITIONS = ("word-to-eot", "last-word")


DEFAULTS_FROM = "UCE train-scripts/train_erase.py, rohitgandikota/unified-concept-editing@bd5fb51"


@dataclass(frozen=True)
class UceConfig:
    lamb: float = 0.5  # lambda of Eq. 7: how strongly W stays at W0
    erase_scale: float = 1.0
    preserve_scale: float | None = None  # None: max(0.1, 1 / (1 + preserved prompts)), the script's rule
    edit_keys: bool = True  # to_k as well as to_v
    positions: str = "word-to-eot"  # or "last-word"
    corpus: str | None = None  # "tiny" or a caption file: preservation statistics (off in the paper)
    corpus_scale: float = 1.0

    # On the tiny model, the tiny caption corpus keeps what the erased words share with others: without it,
    # erasing "red" also blurred the other colours (their fidelity 1.00 -> 0.43) and erasing "star" towards "shape"
    # changed "a red shape" (1.00 -> 0.86); with it, 1.00 and 1.00 (measured, 24-120 images per group). lamb and
    # preserve_scale 0.1 are the settings every tiny table was measured with.
    tiny_overrides: ClassVar[dict] = {"corpus": "tiny", "corpus_scale": 0.1, "lamb": 0.1, "preserve_scale": 0.1}
    defaults_from: ClassVar[str] = DEFAULTS_FROM

    def check(self) -> None:
        """What can be refused before a model loads."""
        check_corpus(self.corpus, "UCE")


def resolved_preserve_scale(config: UceConfig, spec: EraseSpec) -> float:
    """``config.preserve_scale``, or the UCE script's rule when it is ``None``: max(0.1, 1 / len(retain_texts)),
    where retain_texts is the empty prompt plus the preserved prompts."""
    if config.preserve_scale is not None:
        return config.preserve_scale
    return max(0.1, 1 / (1 + len(spec.preserved())))


def aligned_rows(targets: Encoded, anchors: Encoded, positions: str, target_ends: list[int] | None = None,
                 anchor_ends: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys c_i (n, C) from the target prompts and the aligned anchor rows (n, C) their outputs should take,
    starting at ``target_ends`` / ``anchor_ends`` (the concept's last token; default: each prompt's last word)."""
    if positions not in POSITIONS:
        raise EraselabError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    keys, anchor_rows = [], []
    length = targets.hidden.shape[1]
    starts = zip(target_ends or targets.last_word, anchor_ends or anchors.last_word, strict=True)
    for i, (t_last, a_last) in enumerate(starts):
        span = 1 if positions == "last-word" else length - max(t_last, a_last)  # align the two tails
        keys.append(targets.hidden[i, t_last:t_last + span])
        anchor_rows.append(anchors.hidden[i, a_last:a_last + span])
    return torch.cat(keys), torch.cat(anchor_rows)


def concept_rows(pipe, spec: EraseSpec, pairs: list[tuple[str, str]], positions: str) -> tuple[torch.Tensor,
                                                                                                torch.Tensor]:
    """UCE's keys and anchor rows for the spec's pairs, starting at the concept's (the anchor's) last token."""
    ends = []
    for prefixes in zip(*spec.prefixes(), strict=True):
        tokens = pipe.tokenizer(list(prefixes), truncation=True, max_length=pipe.tokenizer.model_max_length)
        ends.append([len(ids) - 2 for ids in tokens.input_ids])  # [BOS, ..., last, EoT]: the last at len - 2
    return aligned_rows(encode(pipe, [t for t, _ in pairs]), encode(pipe, [a or " " for _, a in pairs]), positions,
                        ends[0], ends[1])


def preservation(pipe, spec: EraseSpec, corpus: str | None, keep_empty: bool = True
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Preserved keys (every position of every preserved prompt) and the corpus statistics, as configured.
    ``keep_empty`` preserves the empty prompt as well, as the UCE and RECE references always do: classifier-free
    guidance subtracts its prediction at every step, so an edit must leave it where it was."""
    prompts = ([""] if keep_empty else []) + spec.preserved()
    preserve = None
    if prompts:
        hidden = encode(pipe, prompts).hidden
        preserve = hidden.reshape(-1, hidden.shape[-1])
    stats = None
    if corpus is not None:
        stats = corpus_statistics(pipe, load_captions(corpus, concept_phrases(list(spec.concepts))))
    return preserve, stats


def erase(pipe, spec: EraseSpec, config: UceConfig) -> Edit:
    """An :class:`Edit` that erases ``spec.concepts`` from ``pipe`` (``pipe`` itself is not changed)."""
    start = time.perf_counter()
    config.check()
    pairs = check_spec_words(pipe, spec)
    keys, anchor_rows = concept_rows(pipe, spec, pairs, config.positions)
    preserve, stats = preservation(pipe, spec, config.corpus)
    preserve_scale = resolved_preserve_scale(config, spec)
    tensors = solve(projections(pipe, config.edit_keys), keys, anchor_rows, preserve,  # Eq. 7
                    preserve_scale, stats, config.corpus_scale, config.lamb, config.erase_scale)
    return Edit(tensors, manifest("uce", config, spec, pipe, start, resolved={"preserve_scale": preserve_scale}))


METHOD = MethodEntry(erase, UceConfig)
