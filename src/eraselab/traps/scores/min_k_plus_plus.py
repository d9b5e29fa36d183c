"""Min-K%++ (Zhang et al., "Min-K%++: Improved Baseline for Detecting Pre-Training Data", 2024), k = 20%.

Each token's log-probability is standardised by the mean and standard deviation of log p under the model's
own next-token distribution at that position (Eq. 3):
  s_t = (log p(x_t | x_<t) - mu_t) / sigma_t,  mu_t = E_{v~p_t}[log p_t(v)],  sigma_t^2 = Var_{v~p_t}[log p_t(v)];
the score is the mean of the k% lowest s_t (Eq. 4). A training sequence sits near a local maximum of the
likelihood, so its tokens score high relative to the alternatives the model considered.
"""

from eraselab.traps.scores.min_k import K, lowest_fraction_mean
from eraselab.traps.scores.stats import Score, TokenStats


def _score(target: TokenStats, reference: TokenStats | None = None):
    standardised = (target.log_prob - target.mean_log_prob) / target.std_log_prob.clamp_min(1e-12)  # Eq. 3
    return lowest_fraction_mean(standardised, target.mask, K)  # Eq. 4


SCORE = Score("min-k++", "Zhang et al., 2024", _score)
