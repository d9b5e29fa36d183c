"""Min-K% Prob (Shi et al., "Detecting Pretraining Data from Large Language Models", ICLR 2024), k = 20%.

score = mean of the k% lowest token log-probabilities log p(x_t | x_<t) (the paper's Eq. 1): an unseen text
tends to hold a few outlier tokens of very low probability, a seen one fewer.

Token count: the floor int(k n) of a text's n tokens, as both reference codes take it (MIMIR's ``min_k`` attack and
the official Min-K%++ code: ``np.sort(x)[:int(len(x) * k)]``), with at least one token where k n < 1 (where the
references would average nothing).
"""

import torch

from eraselab.traps.scores.stats import Score, TokenStats

K = 0.2


def lowest_fraction_mean(values: torch.Tensor, mask: torch.Tensor, fraction: float = K) -> torch.Tensor:
    """(N,) mean of the int(n_i * fraction) smallest masked values of each row (at least one)."""
    means = []
    for row, keep in zip(values, mask, strict=True):
        real = row[keep]
        count = max(1, int(len(real) * fraction))  # the references' floor
        means.append(real.sort().values[:count].mean())
    return torch.stack(means)


def _score(target: TokenStats, reference: TokenStats | None = None):
    return lowest_fraction_mean(target.log_prob, target.mask)  # Eq. 1


SCORE = Score("min-k", "Shi et al., ICLR 2024", _score)
