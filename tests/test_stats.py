import math

import numpy as np
import pytest

from eraselab.judge.stats import bootstrap_interval, rate_with_interval, wilson_interval


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (41, 97), (1, 1)])
def test_wilson_matches_the_closed_form(k, n):
    z = 1.959963984540054  # the 97.5% normal quantile
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-9)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-9)


def test_a_rate_over_no_valid_item_is_not_zero():
    result = rate_with_interval([None, None, None])
    assert result["value"] is None and result["low"] is None and result["n_errors"] == 3


def test_errors_are_counted_apart_from_the_rate():
    result = rate_with_interval([True, None, False, False])
    assert result["value"] == pytest.approx(1 / 3) and result["n_valid"] == 3 and result["n_errors"] == 1


def test_bootstrap_covers_the_mean_and_is_seeded():
    values = np.random.default_rng(0).normal(2.0, 1.0, 400)
    first, second = bootstrap_interval(values, seed=3), bootstrap_interval(values, seed=3)
    assert first == second
    assert first["low"] < values.mean() < first["high"]
    assert first["high"] - first["low"] == pytest.approx(2 * 1.96 / 20, rel=0.25)  # ~ 2 z sigma / sqrt(n)
    assert bootstrap_interval([])["value"] is None
    assert bootstrap_interval([5.0, 5.0])["low"] == 5.0
