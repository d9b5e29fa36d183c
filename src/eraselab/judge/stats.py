"""Confidence intervals for the harness: Wilson for rates, the bootstrap for everything else.

Both come from SciPy (``binomtest(...).proportion_ci(method="wilson")`` and ``scipy.stats.bootstrap``). A rate
over zero valid items is not 0: it is ``None`` ("N/A"), so a crashed detector never reads as "safe".

>>> {k: round(v, 4) for k, v in rate_with_interval([True, False, True, None]).items()}
{'value': 0.6667, 'low': 0.2077, 'high': 0.9385, 'n_valid': 3, 'n_errors': 1}
>>> rate_with_interval([None, None])["value"] is None
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float] | tuple[None, None]:
    """Wilson score interval of a binomial proportion; ``(None, None)`` when ``n == 0``."""
    if n == 0:
        return None, None
    interval = stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def rate_with_interval(flags: Sequence[bool | None], confidence: float = 0.95) -> dict:
    """Share of True among valid items (``None`` marks an item whose judgement failed), with its interval."""
    valid = [bool(f) for f in flags if f is not None]
    low, high = wilson_interval(sum(valid), len(valid), confidence)
    return {"value": (sum(valid) / len(valid)) if valid else None, "low": low, "high": high,
            "n_valid": len(valid), "n_errors": len(flags) - len(valid)}


def bootstrap_interval(values: Sequence[float], statistic: Callable[..., float] = np.mean, confidence: float = 0.95,
                       n_resamples: int = 2000, seed: int = 0) -> dict:
    """Percentile-bootstrap interval (BCa needs more than a handful of items) of ``statistic`` over ``values``."""
    data = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(data) == 0:
        return {"value": None, "low": None, "high": None, "n_valid": 0}
    value = float(statistic(data))
    if len(data) == 1 or np.all(data == data[0]):
        return {"value": value, "low": value, "high": value, "n_valid": len(data)}
    result = stats.bootstrap((data,), statistic, confidence_level=confidence, n_resamples=n_resamples,
                             method="percentile", rng=np.random.default_rng(seed))
    return {"value": value, "low": float(result.confidence_interval.low),
            "high": float(result.confidence_interval.high), "n_valid": len(data)}
