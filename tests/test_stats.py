"""Statistics from stored predictions: seeded bootstrap, paired tests, Holm, robustness indices."""

from __future__ import annotations

import numpy as np
import pytest

from mer_bench.metrics import classification_metrics, regression_metrics
from mer_bench.results import stats
from mer_bench.results.evidence import Quantity, majority_metrics, paired
from mer_bench.scoring import metric_parts, weighted_metric

IDS = [f"s{i}" for i in range(400)]


def _sim(acc: float, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """3-way scores that are right on a fraction `acc` of samples (never neutral)."""
    right = rng.random(len(y)) < acc
    pred = np.where(right, y, 2 - y)
    s = np.full((len(y), 3), -5.0)
    s[np.arange(len(y)), pred] = 0.0
    return s


def _quantity(scores_by_seed: list[np.ndarray], y: np.ndarray, w: np.ndarray) -> Quantity:
    preds = {"labels": y}
    pts, boots = [], []
    for s in scores_by_seed:
        parts = metric_parts("classification", "binary", s, preds, "Non0_acc_2")
        pts.append(weighted_metric(parts, np.ones((1, len(y))))[0])
        boots.append(weighted_metric(parts, w))
    return Quantity(list(range(len(scores_by_seed))), np.array(pts), np.stack(boots), 1)


def test_bootstrap_is_seeded_and_reproducible():
    a = stats.resample_weights(IDS, 200)
    b = stats.resample_weights(IDS, 200)
    assert np.array_equal(a, b)
    assert a.shape == (200, 400) and np.all(a.sum(1) == 400)
    assert not np.array_equal(a, stats.resample_weights(IDS, 200, seed=19))
    assert not np.array_equal(a, stats.resample_weights(IDS[::-1], 200))  # keyed by the test set
    assert np.array_equal(stats.seed_draws(3, 50), stats.seed_draws(3, 50))


def test_weighted_metrics_equal_the_scorer_with_unit_weights():
    rng = np.random.default_rng(0)
    y3 = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3))
    ref = classification_metrics(logits, y3)
    for name, value in ref.items():
        parts = metric_parts("classification", "binary", logits, {"labels": y3}, name)
        assert weighted_metric(parts, np.ones((1, 300)))[0] == pytest.approx(value, abs=1e-12)
    yr, pr = rng.normal(size=300) * 2, rng.normal(size=300) * 2
    yr[:20] = 0.0
    ref = regression_metrics(pr, yr)
    for name, value in ref.items():
        parts = metric_parts("regression", "binary", pr, {"y_reg": yr}, name)
        assert weighted_metric(parts, np.ones((1, 300)))[0] == pytest.approx(value, abs=1e-9)


def test_interval_covers_and_narrows_with_more_samples():
    rng = np.random.default_rng(1)
    y = np.where(rng.random(400) < 0.5, 0, 2)
    q = _quantity([_sim(0.8, y, rng)], y, stats.resample_weights(IDS))
    s = q.summary()
    assert s.lo < s.mean < s.hi and s.n == 1 and s.std == 0.0
    assert 0.04 < s.hi - s.lo < 0.12  # ~ 4 binomial standard errors at n = 400


def test_known_paired_difference_is_detected_and_null_is_not():
    rng = np.random.default_rng(2)
    y = np.where(rng.random(400) < 0.5, 0, 2)
    w = stats.resample_weights(IDS)
    strong, weak = _sim(0.82, y, rng), _sim(0.66, y, rng)
    d, lo, hi, p, same = paired(_quantity([strong], y, w), _quantity([weak], y, w))
    assert same and p < 0.01 and lo > 0 and lo < d < hi
    b, c, pm = stats.mcnemar(strong.argmax(1) == y, weak.argmax(1) == y)
    assert b > c and pm < 0.01
    # null: two models of equal accuracy, differing only by noise
    a1, a2 = _sim(0.75, y, rng), _sim(0.75, y, rng)
    d, lo, hi, p, _ = paired(_quantity([a1], y, w), _quantity([a2], y, w))
    assert p > 0.05 and lo < 0 < hi
    assert stats.mcnemar(a1.argmax(1) == y, a2.argmax(1) == y)[2] > 0.05
    # a model against itself: difference exactly 0, p = 1
    assert paired(_quantity([a1], y, w), _quantity([a1], y, w))[0] == 0.0
    assert paired(_quantity([a1], y, w), _quantity([a1], y, w))[3] == 1.0


def test_seed_mean_interval_widens_with_seed_spread():
    rng = np.random.default_rng(3)
    y = np.where(rng.random(400) < 0.5, 0, 2)
    w = stats.resample_weights(IDS)
    tight = _quantity([_sim(0.75, y, rng) for _ in range(3)], y, w).summary()
    spread = _quantity([_sim(a, y, rng) for a in (0.6, 0.75, 0.9)], y, w).summary()
    assert spread.std > tight.std and (spread.hi - spread.lo) > (tight.hi - tight.lo)
    assert spread.n == 3


def test_holm_matches_hand_computation():
    adj = stats.holm([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, running max
    assert adj.tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(stats.holm([np.nan, 0.01])[0]) and stats.holm([np.nan, 0.01])[1] == 0.01
    assert stats.holm([0.5, 0.9]).tolist() == [1.0, 1.0]


def test_mcnemar_exact_values():
    a = np.array([1] * 7 + [0] * 1 + [1] * 10, dtype=bool)
    b = np.array([0] * 7 + [1] * 1 + [1] * 10, dtype=bool)
    # b = 7, c = 1: p = 2 * P[Bin(8, .5) <= 1] = 2 * 9 / 256
    assert stats.mcnemar(a, b) == (7, 1, pytest.approx(18 / 256))
    assert stats.mcnemar(a, a) == (0, 0, 1.0)


def test_effective_robustness_of_the_reference_against_itself_is_zero():
    rates = [0.0, 0.1, 0.3, 0.6, 1.0]
    lf = np.array([0.85, 0.84, 0.80, 0.70, 0.55])
    for conv in stats.CONVENTIONS:
        assert stats.effective_robustness(rates, lf, lf, conv) == 0.0
        boot = np.stack([lf + 0.01 * i for i in range(5)])
        assert np.all(stats.effective_robustness(rates, boot, boot, conv) == 0.0)
    # a curve that keeps its level beats the reference by the reference's mean drop
    flat = np.full(5, 0.80)
    drop = stats.relative_robustness(rates, lf - lf[0], "trapezoid")
    assert stats.effective_robustness(rates, flat, lf) == pytest.approx(-drop)


def test_relative_robustness_conventions():
    rates = [0.0, 0.5, 1.0]
    v = np.array([0.8, 0.6, 0.4])
    assert stats.relative_robustness(rates, v) == pytest.approx(0.6)  # mean level, trapezoid
    assert stats.relative_robustness(rates, v, "multibench-step") == pytest.approx(0.12)  # (1.4 + 1.0) * .05


def test_smm_dependence_and_majority():
    values = {"L": 0.8, "A": 0.6, "V": 0.55, "LA": 0.82, "LV": 0.81, "AV": 0.62, "LAV": 0.85}
    dep = stats.smm_dependence({k: np.float64(v) for k, v in values.items()})
    assert dep["L removed"] == pytest.approx(0.23) and dep["V kept"] == pytest.approx(0.30)
    y = np.array([0, 0, 2, 2, 2, 1])
    assert majority_metrics({"labels": y}, "binary")["Non0_acc_2"] == pytest.approx(0.6)


def test_paired_sample_test_counts_samples_not_seed_repeats():
    """Three identical seeds carry no more evidence than one: pooling them into one McNemar
    table would (p < 0.05), the per-sample test keeps the one-seed McNemar p."""
    a = np.array([1] * 12 + [0] * 5 + [1] * 40, dtype=bool)
    b = np.array([0] * 12 + [1] * 5 + [1] * 40, dtype=bool)
    one = stats.mcnemar(a, b)
    assert stats.paired_sample_test(a[None], b[None]) == one
    three = stats.paired_sample_test(np.stack([a] * 3), np.stack([b] * 3))
    assert three == one and one[2] > 0.1
    assert stats.mcnemar(np.tile(a, 3), np.tile(b, 3))[2] < 0.05


def test_paired_sample_test_sign_flip_is_seeded_and_detects():
    rng = np.random.default_rng(0)
    truth = rng.random((3, 200))
    strong, weak = truth < 0.85, truth < 0.65  # A right wherever B is, and on more samples
    b, c, p = stats.paired_sample_test(strong, weak)
    assert c == 0 and b > 30 and p < 1e-3
    assert stats.paired_sample_test(strong, weak) == (b, c, p)
    null_a, null_b = rng.random((3, 200)) < 0.7, rng.random((3, 200)) < 0.7
    assert stats.paired_sample_test(null_a, null_b)[2] > 0.05
