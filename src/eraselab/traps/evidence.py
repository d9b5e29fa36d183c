"""From membership scores to evidence: ROC AUC with a 95% interval, TPR at low FPR, and an exact test.

The AUC is what Meeus et al. (ICML 2024) report; it says how separable members and controls are but bounds
no error rate. The test is what a rights holder needs. Each published trap was chosen uniformly at random
among itself and its K sibling traps (same generator, length and perplexity band) before publication, so for
a model that never saw the documents the published trap's score is exchangeable with its siblings' and its
rank is uniform. The rank p-value

    p_i = (1 + #{siblings j : s_j >= s_i}) / (K + 1)

is therefore exact (ties count against the claim: conservative), and the p-values of different traps are
independent; Fisher's method combines them with T = -2 sum log p_i (Fisher, 1932). Its usual chi^2(2n) tail is
conservative for these discrete p-values, so the combined p-value is taken from T's exact null distribution
instead: every rank uniform and independent, sampled (seeded) ``null_draws`` times, p = (1 + #{T* >= T}) / (1 + M).
The chi^2 value is reported beside it; the calibration check measures the rejection rate of both.

>>> rank_p_value(3.0, [1.0, 2.0, 0.5])
0.25
>>> rank_p_value(1.0, [1.0, 2.0, 0.5])
0.75
>>> round(auc([2.0, 3.0], [1.0, 2.0]), 3)
0.875
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats
from torchmetrics.functional.classification import binary_roc

MIN_SIBLINGS = 10  # in all: fewer and no combination of rank p-values means much
MIN_SIBLINGS_PER_TRAP = 4  # each published trap's: its p-value is never below 1/(K + 1), 0.2 at K = 4


def rank_p_value(published: float, siblings: Sequence[float]) -> float:
    """Exact rank p-value of one published trap's score among its siblings' scores."""
    return (1 + sum(s >= published for s in siblings)) / (len(siblings) + 1)


def fisher_statistic(p_values: Sequence[float]) -> float:
    return float(-2 * np.log(np.asarray(p_values, dtype=float)).sum())


def fisher_chi2(p_values: Sequence[float]) -> float:
    """Fisher's method with the chi^2(2n) tail (conservative for rank p-values)."""
    return float(stats.combine_pvalues(list(p_values), method="fisher").pvalue)


class FisherNull:
    """The exact null distribution of Fisher's T for rank p-values among ``sibling_counts[i]`` siblings.

    Smaller than the chi^2 tail, and never below its resolution 1 / (draws + 1):

    >>> null = FisherNull([19] * 5, draws=20000)
    >>> p = [0.05, 0.05, 0.3, 0.5, 0.2]
    >>> round(null.p_value(fisher_statistic(p)), 3), round(fisher_chi2(p), 3)
    (0.006, 0.04)
    >>> null.p_value(fisher_statistic([0.05] * 5)) == 1 / 20001
    True
    """

    def __init__(self, sibling_counts: Sequence[int], draws: int = 200_000, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        totals = np.zeros(draws)
        for k in sibling_counts:  # one trap at a time keeps memory at O(draws)
            ranks = rng.integers(1, k + 2, size=draws)  # rank among k + 1, uniform under the null
            totals += -2 * np.log(ranks / (k + 1))
        self.sorted = np.sort(totals)

    def p_value(self, statistic: float) -> float:
        return float(self.p_values(np.asarray([statistic]))[0])

    def p_values(self, statistics: np.ndarray) -> np.ndarray:
        at_least = len(self.sorted) - np.searchsorted(self.sorted, statistics - 1e-9, side="left")
        return (1 + at_least) / (1 + len(self.sorted))

    @property
    def resolution(self) -> float:
        """The smallest p-value this null can give."""
        return 1 / (1 + len(self.sorted))


def auc(members: Sequence[float], controls: Sequence[float]) -> float:
    """P(member score > control score) + P(tie)/2: the Mann-Whitney U over n_m n_c."""
    return float(stats.mannwhitneyu(members, controls).statistic / (len(members) * len(controls)))


def permutation_auc(published: Sequence[float], siblings: Sequence[Sequence[float]], draws: int = 4000,
                    seed: int = 0) -> np.ndarray:
    """The AUC's distribution under the sibling design with no membership: each trap's published member re-drawn
    uniformly among itself and its siblings, ``draws`` times. The pooled scores never change, only which of them
    are members, so each draw is a sum of precomputed midranks (the Mann-Whitney U from rank sums)."""
    groups = [np.asarray([p, *group], dtype=float) for p, group in zip(published, siblings, strict=True)]
    ranks = stats.rankdata(np.concatenate(groups))  # midranks: ties count one half, as in the AUC
    m, n = len(groups), sum(len(g) - 1 for g in groups)
    rng, member_ranks, start = np.random.default_rng(seed), np.zeros(draws), 0
    for group in groups:
        member_ranks += ranks[start:start + len(group)][rng.integers(len(group), size=draws)]
        start += len(group)
    return (member_ranks - m * (m + 1) / 2) / (m * n)


def auc_with_interval(published: Sequence[float], siblings: Sequence[Sequence[float]], seed: int = 0,
                      n_resamples: int = 2000) -> dict:
    """ROC AUC of the published traps against their siblings and a 95% interval: the union of two.

    - The BCa bootstrap (members and controls resampled separately, SciPy): right for large groups, but with few
      traps it under-covers, worst where the AUC is far from 0.5 (8 traps, true AUC 0.921: missed in 16% of 300
      runs; the percentile bootstrap eraselab used before: 21%, and it excluded 0.5 in 10.3% of null runs).
    - The permutation interval: the observed AUC minus the central 95% of the deviations of
      :func:`permutation_auc` from its mean. Exact when nothing was learned (the roles really were drawn so), and
      conservative as the AUC grows (its spread shrinks); alone it under-covers where the members' spread differs
      from the siblings' (8 traps, members N(0, 3): 24% misses), which the bootstrap catches (7%).

    The union covers wherever either does; measured in ``tests/test_traps.py`` (coverage under the null at 8 and 96
    traps, and at a true AUC of 0.921)."""
    m, c = np.asarray(published, dtype=float), np.asarray([s for group in siblings for s in group], dtype=float)

    def statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return stats.mannwhitneyu(x, y, axis=axis).statistic / (x.shape[axis] * y.shape[axis])

    value = auc(m, c)
    with warnings.catch_warnings():  # a degenerate bootstrap (AUC 0 or 1) gives NaN bounds: the other interval holds
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # its acceleration's 0/0 on such data
        boot = stats.bootstrap((m, c), statistic, n_resamples=n_resamples, method="BCa",
                               rng=np.random.default_rng(seed), vectorized=True).confidence_interval
    null = permutation_auc(published, siblings, seed=seed)
    low_dev, high_dev = np.quantile(null - null.mean(), [0.025, 0.975])
    permutation = (max(0.0, value - high_dev), min(1.0, value - low_dev))
    return {"value": value, "low": float(np.nanmin([boot.low, permutation[0]])),
            "high": float(np.nanmax([boot.high, permutation[1]])),
            "bootstrap": [float(boot.low), float(boot.high)], "permutation": [float(v) for v in permutation]}


def roc_curve(members: Sequence[float], controls: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every threshold, as exact fractions (torchmetrics gives float32)."""
    scores = torch.tensor([*members, *controls], dtype=torch.float64)
    labels = torch.tensor([1] * len(members) + [0] * len(controls))
    fpr, tpr, _ = binary_roc(scores, labels)
    return (np.round(fpr.double().numpy() * len(controls)) / len(controls),
            np.round(tpr.double().numpy() * len(members)) / len(members))


def tpr_at_fpr(members: Sequence[float], controls: Sequence[float], fpr_level: float) -> float:
    """The largest true-positive rate of a threshold whose false-positive rate is at most ``fpr_level``."""
    fpr, tpr = roc_curve(members, controls)
    return float(tpr[fpr <= fpr_level + 1e-12].max())


def membership_test(published: Sequence[float], siblings: Sequence[Sequence[float]], seed: int = 0) -> dict:
    """Everything reported per score: AUC [interval], TPR at 1%/10% FPR, per-trap and combined p-values."""
    controls = [s for group in siblings for s in group]
    if len(controls) < MIN_SIBLINGS:
        raise ValueError(f"only {len(controls)} sibling traps in all; at least {MIN_SIBLINGS} are needed")
    p_values = [rank_p_value(p, group) for p, group in zip(published, siblings, strict=True)]
    mean_gap = float(np.mean(published) - np.mean(controls))
    spread = float(np.std(controls, ddof=1)) if len(controls) > 1 else 0.0
    null = FisherNull([len(group) for group in siblings], seed=seed)
    return {"auc": auc_with_interval(published, siblings, seed),
            "tpr_at_1pct_fpr": tpr_at_fpr(published, controls, 0.01),
            "tpr_at_10pct_fpr": tpr_at_fpr(published, controls, 0.10), "p_values": p_values,
            "combined_p": null.p_value(fisher_statistic(p_values)), "combined_p_resolution": null.resolution,
            "combined_p_chi2": fisher_chi2(p_values),
            "effect_size": mean_gap / spread if spread > 0 else None,
            "n_published": len(published), "n_siblings": len(controls)}


def calibration(published: Sequence[float], siblings: Sequence[Sequence[float]], draws: int = 100_000,
                alpha: float = 0.05, seed: int = 0, null_draws: int = 1_000_000) -> dict:
    """Re-draw which member of each (published + siblings) group is "published", uniformly, ``draws`` times,
    and count how often the combined test rejects at ``alpha``. On a model that never saw the documents this
    rate must stay at alpha up to sampling error: the roles really were drawn this way before publication, and
    the test is exact, so its size is alpha (the chi^2 tail's is far below, which costs power)."""
    from eraselab.judge.stats import wilson_interval

    rng = np.random.default_rng(seed)
    groups = [np.asarray([p, *group], dtype=float) for p, group in zip(published, siblings, strict=True)]
    null = FisherNull([len(group) - 1 for group in groups], draws=null_draws, seed=seed + 1)
    statistic = np.zeros(draws)
    for group in groups:
        # each member's rank p-value were it the published one: (1 + #others >= it) / n = #(all >= it) / n
        table = (group[None, :] >= group[:, None]).sum(1) / len(group)
        statistic += -2 * np.log(table[rng.integers(len(group), size=draws)])
    exact = int((null.p_values(statistic) < alpha).sum())
    chi2 = int((stats.chi2.sf(statistic, 2 * len(groups)) < alpha).sum())
    result = {"draws": draws, "alpha": alpha}
    for name, count in (("exact", exact), ("chi2", chi2)):
        low, high = wilson_interval(count, draws)
        result[name] = {"rejection_rate": count / draws, "low": low, "high": high}
    return result
