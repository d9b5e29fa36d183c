"""What the UNet is conditioned on, for every supported layout: the cross-attention context of a prompt and, on
SDXL, the pooled text embedding that joins the time embedding.

SD 1.x/2.x condition cross-attention on one CLIP text encoder's last hidden state (C = 768 or 1024). SDXL
concatenates the penultimate hidden states of its two encoders (CLIP ViT-L 768 + OpenCLIP bigG 1280 = 2048) and
adds the second encoder's pooled, projected embedding through ``added_cond_kwargs``. Both come from the pipeline's
own ``encode_prompt``, so eraselab conditions exactly as diffusers does. The closed-form editors see only the
context (the reference UCE script edits ``encode_prompt``'s first output on SDXL too): the pooled embedding is not
a cross-attention input and is left as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from eraselab.errors import EraselabError


def is_sdxl(pipe) -> bool:
    """Whether ``pipe`` has SDXL's two text encoders (and pooled conditioning)."""
    return getattr(pipe, "text_encoder_2", None) is not None


def text_encoders(pipe) -> list:
    """The pipeline's text encoders, in the order its context concatenates them (SDXL: two)."""
    return [pipe.text_encoder] + ([pipe.text_encoder_2] if is_sdxl(pipe) else [])


def tokenizers(pipe) -> list:
    """Each text encoder's tokenizer (SDXL's two share a vocabulary but pad differently)."""
    return [pipe.tokenizer] + ([pipe.tokenizer_2] if is_sdxl(pipe) else [])


def require_one_text_encoder(pipe, what: str) -> None:
    """Refuse ``what`` on SDXL, in one line, where it reaches into a single text encoder (or the UNet without its
    pooled conditioning) and has not been extended to SDXL's two."""
    if is_sdxl(pipe):
        raise EraselabError(f"{what} does not support SDXL yet (it works through one text encoder); on SDXL use "
                            "erase uce/rece/trce/esd/safegen/advunlearn, generate, run, the negative-prompt, SLD "
                            "and composition guards and every attack")


def encode_context(pipe, prompts: Sequence[str]) -> torch.Tensor:
    """The cross-attention context (B, T, C) the UNet reads for ``prompts``, in the text encoder's dtype."""
    with torch.no_grad():
        return pipe.encode_prompt(prompt=list(prompts), device=pipe.device, num_images_per_prompt=1,
                                  do_classifier_free_guidance=False)[0]


@dataclass(frozen=True)
class Encoded:
    """Text-encoder outputs of a batch of prompts, padded to the tokenizer's length, and per prompt the index of
    its last word token (0 for the empty prompt: the BOS) and of its first [EoT] token."""

    hidden: torch.Tensor  # (B, T, C), float64
    last_word: list[int]
    first_eot: list[int]


def encode(pipe, prompts: list[str]) -> Encoded:
    """The cross-attention context of ``prompts`` (on SDXL both encoders' outputs side by side, 2048 wide)."""
    tokens = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt")
    hidden = encode_context(pipe, prompts).double().cpu()
    lengths = [int(mask.sum()) for mask in tokens.attention_mask]  # [BOS, words..., EoT]
    return Encoded(hidden, [n - 2 for n in lengths], [n - 1 for n in lengths])


@dataclass
class Conditioning:
    """A batch's positive and negative contexts (B, T, C) and, on SDXL, their pooled embeddings (B, P)."""

    positive: torch.Tensor
    negative: torch.Tensor
    pooled: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None

    def for_unet(self, pipe, height: int, width: int) -> tuple[UNetCondition, UNetCondition]:
        """The positive and negative conditionings as the UNet reads them for ``height`` x ``width`` images."""
        ids = micro_conditioning(pipe, height, width, len(self.positive), self.positive)
        return (UNetCondition(self.positive, self.pooled, ids),
                UNetCondition(self.negative, self.negative_pooled, ids))

    def pipeline_kwargs(self) -> dict:
        """The embedding arguments of the pipeline's ``__call__``."""
        kwargs = {"prompt_embeds": self.positive, "negative_prompt_embeds": self.negative}
        if self.pooled is not None:
            kwargs |= {"pooled_prompt_embeds": self.pooled, "negative_pooled_prompt_embeds": self.negative_pooled}
        return kwargs


def encode_batch(pipe, prompts: Sequence[str], negatives: Sequence[str]) -> Conditioning:
    """Encodings for classifier-free guidance, as the pipeline makes them for each prompt on its own. On SDXL an
    empty negative prompt gives zero embeddings where the model asks for that (``force_zeros_for_empty_prompt``,
    SDXL base's setting), as ``pipe(prompt)`` does."""
    with torch.no_grad():
        encoded = pipe.encode_prompt(prompt=list(prompts), device=pipe.device, num_images_per_prompt=1,
                                     do_classifier_free_guidance=True, negative_prompt=list(negatives))
    conditioning = Conditioning(*encoded)
    if is_sdxl(pipe) and pipe.config.get("force_zeros_for_empty_prompt", False):
        for row, negative in enumerate(negatives):
            if not negative:
                conditioning.negative[row] = 0
                conditioning.negative_pooled[row] = 0
    return conditioning


@dataclass(frozen=True)
class UNetCondition:
    """A batch's conditioning as the UNet reads it, for the code that calls the UNet itself (the trained erasers'
    samplers and losses): the cross-attention context (B, T, C) and, on SDXL, the pooled text embedding (B, P) and
    the six micro-conditioning ids (B, 6) that join the time embedding through ``added_cond_kwargs``."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.context)

    def _map(self, change) -> UNetCondition:
        return UNetCondition(*(None if x is None else change(x) for x in (getattr(self, f.name) for f in fields(self))))

    def rows(self, index: torch.Tensor | slice) -> UNetCondition:
        """The rows ``index`` selects."""
        return self._map(lambda x: x[index])

    def expand(self, n: int) -> UNetCondition:
        """A one-row conditioning repeated ``n`` times (a view, as ``Tensor.expand``)."""
        return self._map(lambda x: x.expand(n, *x.shape[1:]))

    @staticmethod
    def cat(parts: Sequence[UNetCondition]) -> UNetCondition:
        """The batches ``parts``, one after the other."""
        columns = [[getattr(p, f.name) for p in parts] for f in fields(UNetCondition)]
        return UNetCondition(*(None if column[0] is None else torch.cat(column) for column in columns))

    def unet_kwargs(self) -> dict:
        """The conditioning arguments of ``UNet2DConditionModel.forward``."""
        kwargs = {"encoder_hidden_states": self.context}
        if self.pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return kwargs


def guidance_conditions(pipe, prompts: Sequence[str]) -> tuple[UNetCondition, UNetCondition]:
    """Each prompt's conditioning and its unconditional (empty negative prompt) one, as ``pipe(prompt)`` makes
    them: on SDXL the pooled embeddings (zeros for the empty prompt where the model asks, as
    :func:`encode_batch`) and the :func:`micro_conditioning` of the pipeline's default size."""
    encoded = encode_batch(pipe, prompts, [""] * len(prompts))
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return encoded.for_unet(pipe, size, size)


def micro_conditioning(pipe, height: int, width: int, rows: int, like: torch.Tensor) -> torch.Tensor | None:
    """SDXL's micro-conditioning (Podell et al., ICLR 2024, Sec. 2.2) for images of ``height`` x ``width`` pixels,
    as ``pipe(prompt, height=, width=)`` makes it: original size, crop top-left (0, 0), target size; (rows, 6), or
    None off SDXL."""
    if not is_sdxl(pipe):
        return None
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=like.dtype, device=like.device)
    return ids.expand(rows, -1)
