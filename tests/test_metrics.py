import numpy as np
import pytest
import torch

from eraselab.judge.metrics import METRICS, feature_distance, presence_change, presence_rate, set_distance


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


def test_every_metric_declares_its_direction():
    for name in METRICS.names():
        spec = METRICS.get(name)
        assert spec.higher_is_better in (True, False, None) and spec.description
    assert METRICS.get("efficacy").higher_is_better is False and METRICS.get("specificity").higher_is_better


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


class _TinyFeatures(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def forward(self, x):
        return self.net(x).double()


def test_fid_of_a_distribution_with_itself_is_near_zero_and_grows_with_a_shift():
    features = _TinyFeatures()
    images = torch.rand(200, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    same = set_distance("fid", features, 8)
    same.update(images, real=True)
    same.update(images, real=False)
    shifted = set_distance("fid", features, 8)
    shifted.update(images, real=True)
    shifted.update((images * 0.5).clamp(0, 1), real=False)
    assert abs(float(same.compute())) < 1e-3
    assert float(shifted.compute()) > 100 * max(abs(float(same.compute())), 1e-6)


def test_kid_of_identical_feature_sets_is_near_zero():
    from eraselab.judge.metrics import kernel_inception_distance

    features = torch.randn(120, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    same = kernel_inception_distance(features, features.clone())
    shifted = kernel_inception_distance(features, features + 3.0)
    assert abs(same["value"]) < 0.05 * shifted["value"] and shifted["value"] > 0


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
