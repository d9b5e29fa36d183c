"""How many traps and siblings a publisher needs: the power of the combined rank test for an effect size.

The effect size d is the gap between a published trap's membership score and its siblings', in units of the
siblings' standard deviation (``eraselab traps detect`` reports it per group, i.e. per length, perplexity band
and number of repetitions, so the repetitions a publisher needs come from the group whose d suffices). Under
that model (published score ~ N(d, 1), siblings ~ N(0, 1)), each trap's rank among its K siblings is simulated,
the ranks are combined with Fisher's statistic and its exact null (:class:`~eraselab.traps.evidence.FisherNull`),
and the power is the share of simulated publications whose combined p-value falls below the target.

>>> result = simulate_power(effect=2.0, traps=10, siblings=19, alpha=0.001, draws=400)
>>> result["power"] > 0.9
True
>>> simulate_power(effect=0.0, traps=10, siblings=19, alpha=0.05, draws=2000)["power"] < 0.07
True
"""

from __future__ import annotations

import numpy as np

from eraselab.errors import EraselabError
from eraselab.traps.evidence import MIN_SIBLINGS, FisherNull


def simulate_power(effect: float, traps: int, siblings: int, alpha: float = 0.001, draws: int = 2000,
                   seed: int = 0) -> dict:
    """Share of ``draws`` simulated publications whose combined p-value is below ``alpha``."""
    if traps < 1 or siblings < 1:
        raise EraselabError("--traps and --siblings must be at least 1")
    if traps * siblings < MIN_SIBLINGS:
        raise EraselabError(f"{traps} traps x {siblings} siblings is {traps * siblings} controls; at least "
                            f"{MIN_SIBLINGS} are needed")
    null = FisherNull([siblings] * traps, seed=seed + 1)
    if alpha < 10 * null.resolution:
        raise EraselabError(f"alpha {alpha:g} is below what the exact null resolves ({10 * null.resolution:.1g})")
    rng = np.random.default_rng(seed)
    combined = np.empty(draws)
    chunk = max(1, 2_000_000 // (traps * siblings))
    for start in range(0, draws, chunk):
        n = min(chunk, draws - start)
        published = rng.normal(effect, 1.0, size=(n, traps, 1))
        ranks = 1 + (rng.normal(0.0, 1.0, size=(n, traps, siblings)) >= published).sum(-1)  # (n, traps)
        statistic = -2 * np.log(ranks / (siblings + 1)).sum(-1)
        combined[start:start + n] = null.p_values(statistic)
    return {"effect": effect, "traps": traps, "siblings": siblings, "alpha": alpha, "draws": draws,
            "power": float((combined < alpha).mean()), "median_p": float(np.median(combined))}


def traps_needed(effect: float, siblings: int, alpha: float = 0.001, power: float = 0.8, max_traps: int = 2000,
                 draws: int = 1000, seed: int = 0) -> int | None:
    """The fewest traps reaching ``power`` at ``alpha`` (doubling, then bisection); None if over ``max_traps``."""
    def enough(n: int) -> bool:
        return simulate_power(effect, n, siblings, alpha, draws, seed)["power"] >= power

    low = max(1, -(-MIN_SIBLINGS // siblings))
    high = low
    while not enough(high):
        if high >= max_traps:
            return None
        low, high = high + 1, min(max_traps, high * 2)
    while low < high:
        middle = (low + high) // 2
        if enough(middle):
            high = middle
        else:
            low = middle + 1
    return high
