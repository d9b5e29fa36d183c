"""One forward pass per batch gives every score its inputs: per-token log p, and mean and std of log p.

For sequence tokens x_1..x_T after a context (at least the begin-of-text token), the model's next-token
distribution p_t(.) at each position gives
  log p_t(x_t)                      the token log-probability (loss, zlib ratio, reference ratio, Min-K%);
  mu_t    = sum_v p_t(v) log p_t(v)  and
  sigma_t = sqrt(sum_v p_t(v) log^2 p_t(v) - mu_t^2)   (Min-K%++, Zhang et al., 2024, Eq. 3).
Only the trap's own tokens are scored; the context only conditions them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel


@dataclass(frozen=True)
class TokenStats:
    """Per-token statistics of N sequences, padded to T: tensors (N, T) and a mask of real tokens."""

    log_prob: torch.Tensor
    mean_log_prob: torch.Tensor
    std_log_prob: torch.Tensor
    mask: torch.Tensor
    texts: tuple[str, ...]

    def mean_log_likelihood(self) -> torch.Tensor:
        """(N,) mean over each sequence's tokens of log p(x_t): minus the usual LM loss."""
        return (self.log_prob * self.mask).sum(1) / self.mask.sum(1)


@dataclass(frozen=True)
class Score:
    """A membership score: higher = more likely seen. ``compute(target, reference)`` returns (N,)."""

    name: str
    paper: str
    compute: Callable[[TokenStats, TokenStats | None], torch.Tensor]
    needs_reference: bool = False


@torch.no_grad()
def token_stats(model: PreTrainedModel, sequences: list[list[int]], texts: list[str], begin_token: int,
                contexts: list[list[int]] | None = None, batch_size: int = 64) -> TokenStats:
    """Run ``model`` once over [begin, context, sequence] for every sequence (right-padded batches)."""
    contexts = contexts or [[] for _ in sequences]
    device = next(model.parameters()).device
    width = max(len(s) for s in sequences)
    out = {key: torch.zeros(len(sequences), width, dtype=torch.float64) for key in ("lp", "mu", "sd")}
    mask = torch.zeros(len(sequences), width, dtype=torch.bool)
    for start in range(0, len(sequences), batch_size):
        batch = range(start, min(start + batch_size, len(sequences)))
        rows = [[begin_token, *contexts[i], *sequences[i]] for i in batch]
        length = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        attention = torch.zeros(len(rows), length, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row)
            attention[r, :len(row)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()  # (B, L, V)
        targets = ids[:, 1:, None].to(device)
        token_lp, mu, sd = [], [], []
        # Two rows at a time: the (rows, L, V) temporaries stay in cache, which makes these passes over the
        # vocabulary cost a fraction of the forward pass (benchmarks/traps_scoring.py).
        for rows, row_targets in zip(logits[:, :-1].split(2), targets.split(2), strict=True):
            log_p = torch.log_softmax(rows, dim=-1)  # predicts tokens 1..L-1
            p_log_p = log_p.exp() * log_p
            mean = p_log_p.sum(-1)  # Eq. 3 of Min-K%++: E_v[log p(v)]
            token_lp.append(log_p.gather(-1, row_targets)[..., 0])  # (rows, L-1)
            mu.append(mean)
            sd.append((torch.linalg.vecdot(p_log_p, log_p) - mean.square()).clamp_min(0).sqrt())
        token_lp, mu, sd = torch.cat(token_lp), torch.cat(mu), torch.cat(sd)
        for r, i in enumerate(batch):
            first = len(contexts[i])  # index in the shifted row of the sequence's first token
            n = len(sequences[i])
            out["lp"][i, :n] = token_lp[r, first:first + n].double().cpu()
            out["mu"][i, :n] = mu[r, first:first + n].double().cpu()
            out["sd"][i, :n] = sd[r, first:first + n].double().cpu()
            mask[i, :n] = True
    return TokenStats(out["lp"], out["mu"], out["sd"], mask, tuple(texts))
