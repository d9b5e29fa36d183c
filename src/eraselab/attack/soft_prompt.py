"""Prompts with relaxed tokens, for the gradient attacks (UnlearnDiffAtk, P4D, textual inversion).

A relaxed token is a distribution z over the vocabulary (a row of the probability simplex); its input embedding is
z E, with E the text encoder's token-embedding matrix, so a one-hot z is exactly the typed token and gradients
reach z through the whole text encoder. ``CLIPTextModel.forward`` only takes token ids, so
:func:`encode_with_embeddings` runs its three parts (embeddings with positions, causal encoder, final norm) on
given input embeddings; a test checks it equals the model's own forward on one-hot inputs.
"""

from __future__ import annotations

import inspect

import torch
from transformers.masking_utils import create_causal_mask

# transformers 5.x renamed create_causal_mask's past_key_values to cache (the old name warns, and goes in 5.40)
_NO_CACHE = {"cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values": None}


def token_embeddings(text_encoder) -> torch.Tensor:
    """E: (V, C), the input embedding of every token."""
    return text_encoder.get_input_embeddings().weight


def encode_with_embeddings(text_encoder, input_embeddings: torch.Tensor) -> torch.Tensor:
    """The text encoder's last hidden states (B, T, C) for input token embeddings (B, T, C)."""
    hidden = text_encoder.embeddings(inputs_embeds=input_embeddings)  # adds position embeddings
    mask = create_causal_mask(config=text_encoder.config, inputs_embeds=hidden, attention_mask=None, **_NO_CACHE)
    hidden = text_encoder.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
    return text_encoder.final_layer_norm(hidden)


def insert_embeddings(text_encoder, input_ids: torch.Tensor, embeddings: torch.Tensor,
                      position: int = 1) -> torch.Tensor:
    """Input embeddings (B, T, C) of ``input_ids`` (B, T) with k free embeddings (B, k, C) placed at ``position``
    (1: right after the start token: a soft prefix), the rest shifted right and the sequence cut back to T."""
    typed = token_embeddings(text_encoder)[input_ids]  # (B, T, C)
    merged = torch.cat([typed[:, :position], embeddings.to(typed.dtype), typed[:, position:]], dim=1)
    return merged[:, :input_ids.shape[1]]


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
