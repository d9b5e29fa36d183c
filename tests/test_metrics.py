import numpy as np
import pytest
import torch

from eraselab.judge.metrics import METRICS, feature_distance, presence_change, presence_rate


def test_streaming_equals_one_shot_equals_a_plain_count():
    flags = [bool(x) for x in np.random.default_rng(0).integers(0, 2, 200)] + [None] * 7
    metric = METRICS.get("efficacy").factory()
    for start in range(0, len(flags), 13):
        metric.update(flags[start:start + 13])
    streamed, once = metric.compute(), presence_rate(flags)
    assert streamed == once
    valid = [f for f in flags if f is not None]
    assert once["value"] == sum(valid) / len(valid) and once["n_errors"] == 7
    metric.reset()
    assert metric.compute()["value"] is None  # nothing valid: N/A, not 0


def test_every_metric_declares_its_direction_and_how_it_is_computed():
    directions = {"presence": None, "efficacy": False, "generality": False, "specificity": True,
                  "presence_change": None, "feature_distance": False, "clip_score": True}
    assert {name: METRICS.get(name).higher_is_better for name in METRICS.names()} == directions
    streamed = {name for name in METRICS.names() if METRICS.get(name).factory is not None}
    assert streamed == {"presence", "efficacy", "generality", "specificity", "clip_score"}  # the per-group ones


def test_presence_change_uses_pairs_judged_on_both_sides():
    base = [True, True, False, None, True]
    edited = [False, True, False, True, None]
    result = presence_change(base, edited)
    assert result["per_item"] == [-1.0, 0.0, 0.0] and result["n_errors"] == 2
    assert result["value"] == pytest.approx(-1 / 3)
    with pytest.raises(ValueError, match="paired"):
        presence_change([True], [])


def test_feature_distance_matches_a_loop():
    a, b = torch.randn(20, 8, generator=torch.Generator().manual_seed(0)), torch.randn(20, 8)
    result = feature_distance(a, b)
    expected = [float(((a[i] - b[i]) ** 2).sum().sqrt()) for i in range(20)]
    assert np.allclose(result["per_item"], expected) and result["low"] <= result["value"] <= result["high"]
    assert feature_distance(a, a)["value"] == 0


def _plain_paired_kid(x, y):
    """The paired MMD^2_u written as a double loop over i != j (Gretton et al. 2012, Lemma 6)."""
    n, d = x.shape
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    total = sum(k(x[i], x[j]) + k(y[i], y[j]) - k(x[i], y[j]) - k(x[j], y[i])
                for i in range(n) for j in range(n) if i != j)
    return float(total) / (n * (n - 1))


def _draws(n, d, seed, shift=0.0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=generator, dtype=torch.float64),
            torch.randn(n, d, generator=generator, dtype=torch.float64) + shift)


def test_kid_matches_a_plain_double_loop_and_is_the_same_for_the_same_inputs():
    from eraselab.judge.metrics import kernel_inception_distance

    x, y = _draws(25, 8, seed=3)
    y = x + 0.3 * y  # paired: each y_i near its x_i, as base and edited images at one seed
    first, again = kernel_inception_distance(x, y), kernel_inception_distance(x, y)
    assert first["value"] == pytest.approx(_plain_paired_kid(x, y), rel=1e-9, abs=1e-12)
    assert first == again  # no random subset draw: nothing to seed


def test_kid_of_identical_sets_is_zero_although_the_two_sample_estimator_goes_negative():
    from eraselab.judge.metrics import kernel_inception_distance

    features = torch.randn(60, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    same = kernel_inception_distance(features, features.clone())
    assert abs(same["value"]) < 1e-12 and same["low"] <= 0 <= same["high"]
    n, d = features.shape  # the two-sample estimator counts the same-seed pairs k(x_i, x_i) as cross pairs
    kernel = (features @ features.T / d + 1) ** 3
    off = (kernel.sum() - kernel.diag().sum()) / (n * (n - 1))
    assert float(2 * off - 2 * kernel.mean()) < -0.1  # the bias this estimator removes


def test_kid_of_two_draws_of_one_distribution_is_near_zero_and_its_interval_covers_zero():
    from eraselab.judge.metrics import kernel_inception_distance

    results = [kernel_inception_distance(*_draws(60, 16, seed)) for seed in range(40)]
    shifted = kernel_inception_distance(*_draws(60, 16, seed=0, shift=1.0))
    assert sum(r["low"] <= 0 <= r["high"] for r in results) >= 36  # a 95% interval: 98% measured over 300 seeds
    assert abs(np.mean([r["value"] for r in results])) < 0.1 * shifted["value"]
    assert shifted["low"] > 0


def test_score_metric_streams_like_one_shot():
    scores = list(np.random.default_rng(1).normal(30, 5, 90))
    metric = METRICS.get("clip_score").factory()
    for start in range(0, 90, 25):
        metric.update(scores[start:start + 25])
    result = metric.compute()
    assert result["value"] == pytest.approx(np.mean(scores)) and result["per_item"] == scores
    assert result["low"] < result["value"] < result["high"]
    metric.reset()
    assert metric.compute()["value"] is None
