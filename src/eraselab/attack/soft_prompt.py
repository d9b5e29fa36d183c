"""Prompts with relaxed tokens, for the gradient attacks (UnlearnDiffAtk, P4D, textual inversion).

A relaxed token is a distribution z over the vocabulary (a row of the probability simplex); its input embedding is
z E, with E the text encoder's token-embedding matrix, so a one-hot z is exactly the typed token and gradients
reach z through the whole text encoder. ``CLIPTextModel.forward`` only takes token ids, so
:func:`encode_with_embeddings` runs its three parts (embeddings with positions, causal encoder, final norm) on
given input embeddings; a test checks it equals the model's own forward on one-hot inputs.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from transformers.masking_utils import create_causal_mask

from eraselab.errors import EraselabError

# transformers 5.x renamed create_causal_mask's past_key_values to cache (the old name warns, and goes in 5.40)
_NO_CACHE = {"cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values": None}


def token_embeddings(text_encoder) -> torch.Tensor:
    """E: (V, C), the input embedding of every token."""
    return text_encoder.get_input_embeddings().weight


def require_one_vocabulary(encoders: Sequence, what: str, tokenizer_size: int | None = None) -> None:
    """Refuse ``what``, which reads one token id (or one distribution over ids) through every text encoder's table,
    where the tables (and the tokenizer, when its size is given) differ in size."""
    sizes = {len(token_embeddings(encoder)) for encoder in encoders} | (
        {tokenizer_size} if tokenizer_size is not None else set())
    if len(sizes) > 1:
        raise EraselabError(f"{what} over one vocabulary, and this pipeline's token tables (and tokenizer) differ in "
                            f"size: {', '.join(map(str, sorted(sizes)))}")


def encode_with_embeddings(text_encoder, input_embeddings: torch.Tensor) -> torch.Tensor:
    """The text encoder's last hidden states (B, T, C) for input token embeddings (B, T, C)."""
    hidden = text_encoder.embeddings(inputs_embeds=input_embeddings)  # adds position embeddings
    mask = create_causal_mask(config=text_encoder.config, inputs_embeds=hidden, attention_mask=None, **_NO_CACHE)
    hidden = text_encoder.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
    return text_encoder.final_layer_norm(hidden)


def _penultimate_and_last(text_encoder, input_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden states before the last layer (``hidden_states[-2]``, what SDXL conditions on) and the final-norm
    last hidden states, for input token embeddings (B, T, C). The layers run one by one: transformers 5 collects
    hidden states only around the model's own forward, which takes token ids."""
    model = getattr(text_encoder, "text_model", text_encoder)  # CLIPTextModelWithProjection wraps one
    hidden = model.embeddings(inputs_embeds=input_embeddings)
    mask = create_causal_mask(config=model.config, inputs_embeds=hidden, attention_mask=None, **_NO_CACHE)
    layers = model.encoder.layers
    for layer in layers[:-1]:
        hidden = layer(hidden, mask, is_causal=True)
    return hidden, model.final_layer_norm(layers[-1](hidden, mask, is_causal=True))


def first_eos(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    """Each row's pooled position, as CLIP's own forward picks it (the first end token; the highest id for the
    checkpoints whose config still says eos 2)."""
    eos = getattr(text_encoder, "text_model", text_encoder).config.eos_token_id
    ids = input_ids.to(torch.int)
    return ids.argmax(-1) if eos == 2 else (ids == eos).int().argmax(-1)


def condition_with_embeddings(encoders: Sequence, input_ids: list[torch.Tensor], input_embeddings: list[torch.Tensor]
                              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the UNet is conditioned on, (B, T, C) and on SDXL the pooled text (B, P), for input token embeddings of
    each text encoder of ``encoders`` (a pipeline's :func:`~eraselab.models.conditioning.text_encoders`, or trained
    copies of them: one on SD, two on SDXL, each with the token ids of its own tokenizer: SDXL's pad differently,
    and the pooled text is read at the first end token), as ``encode_prompt`` makes them from token ids: SD the last
    hidden states; SDXL both encoders' penultimate states side by side, and the second encoder's projected end-token
    state."""
    if len(encoders) == 1:
        return encode_with_embeddings(encoders[0], input_embeddings[0]), None
    (first, _), (second, last) = (_penultimate_and_last(encoder, embeddings) for encoder, embeddings in
                                  zip(encoders, input_embeddings, strict=True))
    rows = torch.arange(len(last), device=last.device)
    pooled = encoders[1].text_projection(last[rows, first_eos(encoders[1], input_ids[1]).to(last.device)])
    return torch.cat([first, second], dim=-1), pooled


def insert_embeddings(text_encoder, input_ids: torch.Tensor, embeddings: torch.Tensor,
                      position: int = 1) -> torch.Tensor:
    """Input embeddings (B, T, C) of ``input_ids`` (B, T) with k free embeddings (B, k, C) placed at ``position``
    (1: right after the start token: a soft prefix), the rest shifted right and the sequence cut back to T."""
    typed = token_embeddings(text_encoder)[input_ids]  # (B, T, C)
    merged = torch.cat([typed[:, :position], embeddings.to(typed.dtype), typed[:, position:]], dim=1)
    return merged[:, :input_ids.shape[1]]


def inserted_ids(input_ids: torch.Tensor, count: int, position: int = 1) -> torch.Tensor:
    """The token ids that match :func:`insert_embeddings`' sequence: ``count`` placeholders (id 0, never an end
    token) at ``position``, the rest shifted right and cut back, so the end token sits where the pooled text is
    read."""
    filler = torch.zeros((len(input_ids), count), dtype=input_ids.dtype, device=input_ids.device)
    return torch.cat([input_ids[:, :position], filler, input_ids[:, position:]], dim=1)[:, :input_ids.shape[1]]


def insert_relaxed_tokens(text_encoder, input_ids: torch.Tensor, relaxed: torch.Tensor,
                          position: int = 1) -> torch.Tensor:
    """Input embeddings (B, T, C) of ``input_ids`` (B, T) with k relaxed tokens (B, k, V) placed at ``position``,
    each token's embedding z E."""
    table = token_embeddings(text_encoder)
    return insert_embeddings(text_encoder, input_ids, relaxed.to(table.dtype) @ table, position)


def project_to_simplex(values: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (Duchi et al., ICML 2008, Fig. 1).

    Written here because torch has no simplex projection; it is five tensor lines.

    >>> project_to_simplex(torch.tensor([[0.5, 0.5, 0.5], [2.0, 0.0, -1.0]]))
    tensor([[0.3333, 0.3333, 0.3333],
            [1.0000, 0.0000, 0.0000]])
    """
    ordered = values.sort(dim=-1, descending=True).values
    cumulative = ordered.cumsum(-1) - 1
    index = torch.arange(1, values.shape[-1] + 1, device=values.device, dtype=values.dtype)
    support = (ordered - cumulative / index > 0).sum(-1, keepdim=True)  # rho: largest j with u_j > (sum_j - 1) / j
    threshold = cumulative.gather(-1, support - 1) / support.to(values.dtype)
    return (values - threshold).clamp_min(0)
