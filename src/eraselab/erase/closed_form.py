"""The closed-form cross-attention edit shared by UCE, RECE and TRCE (stage 1).

For each projection W0 (to_k or to_v of a cross-attention layer, shape (out, d)), with edited embeddings c_i
and their targets v*_i, preserved embeddings c_p (scale s_p) and optional cached corpus statistics
E = sum_e e e^T (scale s_c), the minimiser of
    sum_i |W c_i - v*_i|^2 + s_p sum_p |W c_p - W0 c_p|^2 + s_c sum_e |W e - W0 e|^2 + lambda |W - W0|_F^2
is (UCE, Gandikota et al., WACV 2024, Eq. 7, with RECE's and TRCE's use of the same form)
    W = (lambda W0 + sum_i v*_i c_i^T + W0 K) (lambda I + sum_i c_i c_i^T + K)^-1,
    K = s_p sum_p c_p c_p^T + s_c E.
The right factor depends only on embeddings, so it is built once and solved against the layers' left factors in
batched float64 ``torch.linalg.solve`` calls of ``chunk`` layers: one call over every layer of a shape held all
their float64 left factors and a copy of the right factor per layer at once (at SDXL's size, 120 projections of
1280 x 2048: ``python benchmarks/closed_form.py`` prints the peak memory of both).
"""

from __future__ import annotations

import torch


def closed_form_edit(weights: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor,
                     preserve_keys: torch.Tensor | None = None, preserve_scale: float = 1.0,
                     corpus_stats: torch.Tensor | None = None, corpus_scale: float = 1.0,
                     lamb: float = 0.1, chunk: int = 16) -> torch.Tensor:
    """Edited weights for a batch of layers.

    weights: (L, out, d) original projections W0; keys: (n, d) edited embeddings c_i; targets: (L, out, n) the
    outputs v*_i each layer should give them; preserve_keys: (m, d); corpus_stats: (d, d) = sum_e e e^T;
    chunk: layers whose float64 left factors are held at once (memory only: layers are solved independently).
    Returns (L, out, d) in the dtype of ``weights``.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 layer, got {chunk}")
    dtype = weights.dtype
    w0, c = weights.double(), keys.double()
    d = w0.shape[-1]
    if c.shape[-1] != d or targets.shape[-1] != c.shape[0] or targets.shape[:2] != w0.shape[:2]:
        raise ValueError(f"shapes disagree: weights {tuple(weights.shape)}, keys {tuple(keys.shape)}, "
                         f"targets {tuple(targets.shape)}")
    keep = torch.zeros(d, d, dtype=torch.float64, device=w0.device)
    if preserve_keys is not None and len(preserve_keys):
        p = preserve_keys.double()
        keep += preserve_scale * p.T @ p                                   # s_p sum_p c_p c_p^T
    if corpus_stats is not None:
        keep += corpus_scale * corpus_stats.double()                       # s_c sum_e e e^T
    identity = torch.eye(d, dtype=torch.float64, device=w0.device)
    right = lamb * identity + c.T @ c + keep                               # lambda I + sum_i c_i c_i^T + ...
    edited = torch.empty(w0.shape, dtype=dtype, device=w0.device)
    for start in range(0, len(w0), chunk):
        w, v = w0[start:start + chunk], targets[start:start + chunk].double()
        left = lamb * w + v @ c + w @ keep                                 # lambda W0 + sum_i v*_i c_i^T + W0 (...)
        # W right = left  <=>  right^T W^T = left^T; right is symmetric.
        edited[start:start + chunk] = torch.linalg.solve(right, left.transpose(-1, -2)).transpose(-1, -2).to(dtype)
    return edited
