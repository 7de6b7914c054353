"""Bootstrap intervals: hand cases, determinism, coverage sanity, pairing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mmunlearn.metrics.bootstrap import (
    Estimate,
    bootstrap_ci,
    cluster_bootstrap_ci,
    is_significant,
    paired_difference_ci,
)


def test_estimate_str_and_format() -> None:
    est = Estimate(0.82, 0.76, 0.88, 10)
    assert str(est) == "0.82 [0.76, 0.88]"
    assert est.format("{:.1%}") == "82.0% [76.0%, 88.0%]"


def test_estimate_json_round_trip() -> None:
    est = Estimate(0.5, 0.25, 0.75, 4)
    assert est.to_json() == {"mean": 0.5, "low": 0.25, "high": 0.75, "n": 4}
    assert Estimate.from_json(json.loads(json.dumps(est.to_json()))) == est


def test_empty_is_nan_with_n_zero_and_json_safe() -> None:
    est = bootstrap_ci([])
    assert est.n == 0 and all(math.isnan(x) for x in (est.mean, est.low, est.high))
    assert json.dumps(est.to_json(), allow_nan=False) == '{"mean": null, "low": null, "high": null, "n": 0}'
    assert Estimate.from_json(est.to_json()).n == 0
    assert not is_significant(est)


def test_single_value_and_constant_vector_are_points() -> None:
    assert bootstrap_ci([0.3]) == Estimate(0.3, 0.3, 0.3, 1)
    est = bootstrap_ci([0.1] * 50)
    assert est.low == est.high == est.mean and est.n == 50


def test_two_point_hand_case() -> None:
    # Resampled means of [0, 1] are 0, 0.5, 1 with probability 1/4, 1/2, 1/4: the 95% interval spans [0, 1].
    assert bootstrap_ci([0, 1]) == Estimate(0.5, 0.0, 1.0, 2)


def test_booleans_count_as_zero_one() -> None:
    assert bootstrap_ci([True, False, True, True]).mean == 0.75


def test_deterministic_under_seed() -> None:
    values = np.random.default_rng(7).random(60)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


def test_matches_plain_percentile_bootstrap() -> None:
    values = np.array([0.2, 0.9, 0.4, 0.4, 0.7])
    idx = np.random.default_rng(5).integers(0, 5, size=(200, 5))
    low, high = np.quantile(values[idx].mean(axis=1), [0.05, 0.95])
    assert bootstrap_ci(values, n_resamples=200, confidence=0.9, seed=5) == Estimate(values.mean(), low, high, 5)


def test_coverage_sanity_for_a_fair_coin() -> None:
    # Mean 0.5 over n=400: standard error 0.025, so the 95% interval is about [0.45, 0.55].
    est = bootstrap_ci([0, 1] * 200)
    assert est.mean == 0.5
    assert est.low == pytest.approx(0.45, abs=0.01) and est.high == pytest.approx(0.55, abs=0.01)


def test_wider_confidence_is_wider() -> None:
    values = [0, 1] * 50
    narrow, wide = bootstrap_ci(values, confidence=0.5), bootstrap_ci(values, confidence=0.99)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_paired_difference_cancels_item_difficulty() -> None:
    a, b = [3, 7, 11, 5], [1, 5, 9, 3]   # every item improves by exactly 2
    est = paired_difference_ci(a, b)
    assert est == Estimate(2.0, 2.0, 2.0, 4)
    assert is_significant(est)
    # Unpaired, the same 2-point gap is lost in the spread between items.
    assert bootstrap_ci(a).low < bootstrap_ci(b).high


def test_paired_difference_uses_same_indices() -> None:
    a, b = np.array([1, 1, 0, 1, 1, 0]), np.array([0, 1, 0, 0, 1, 1])
    idx = np.random.default_rng(0).integers(0, 6, size=(1000, 6))
    low, high = np.quantile((a[idx] - b[idx]).mean(axis=1), [0.025, 0.975])
    assert paired_difference_ci(a, b) == Estimate(1 / 6, low, high, 6)  # differences 1, 0, 0, 1, 0, -1


def test_is_significant() -> None:
    assert is_significant(Estimate(0.12, 0.05, 0.19, 100))
    assert is_significant(Estimate(-0.12, -0.19, -0.05, 100))
    assert not is_significant(Estimate(0.05, -0.01, 0.11, 100))
    assert not is_significant(Estimate(0.05, 0.0, 0.11, 100))


@pytest.mark.parametrize(("call", "fragment"), [
    (lambda: paired_difference_ci([1, 2, 3], [1, 2]), "a has 3 items, b has 2"),
    (lambda: bootstrap_ci([1.0, float("nan")]), "contains NaN"),
    (lambda: bootstrap_ci([[1.0], [2.0]]), "one-dimensional"),
    (lambda: bootstrap_ci([1.0, 2.0], n_resamples=0), "n_resamples must be >= 1"),
    (lambda: bootstrap_ci([1.0, 2.0], confidence=1.0), "confidence must lie strictly"),
])
def test_bad_input_one_line_error(call, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as err:
        call()
    assert "\n" not in str(err.value)


def test_large_samples_are_batched_deterministically() -> None:
    values = np.random.default_rng(1).random(5000)
    est = bootstrap_ci(values, n_resamples=300, seed=2)
    assert est == bootstrap_ci(values, n_resamples=300, seed=2)
    assert est.low < est.mean < est.high and est.high - est.low < 0.03


# ---------------------------------------------------------------------- clusters


def test_cluster_interval_pools_and_widens_with_correlated_items() -> None:
    """Six questions per creature, all right or all wrong: 50 independent clusters, not 300 items."""
    rng = np.random.default_rng(3)
    per_cluster = rng.random(50) < 0.7
    hits, counts = per_cluster * 6.0, np.full(50, 6.0)
    clustered = cluster_bootstrap_ci(hits, counts, seed=1)
    items = bootstrap_ci(np.repeat(per_cluster, 6).astype(float), seed=1)
    assert clustered.mean == pytest.approx(hits.sum() / counts.sum()) == pytest.approx(items.mean)
    assert clustered.n == 50 and clustered.low <= clustered.mean <= clustered.high
    assert (clustered.high - clustered.low) > 1.8 * (items.high - items.low)  # ~sqrt(6) wider
    assert cluster_bootstrap_ci(hits, counts, seed=1) == clustered


def test_cluster_interval_of_one_item_per_cluster_matches_the_item_bootstrap() -> None:
    values = (np.random.default_rng(4).random(400) < 0.3).astype(float)
    clustered = cluster_bootstrap_ci(values, np.ones(400), seed=2)
    items = bootstrap_ci(values, seed=2)
    assert clustered.mean == pytest.approx(items.mean)
    assert clustered.low == pytest.approx(items.low, abs=0.01) and clustered.high == pytest.approx(items.high, abs=0.01)


def test_cluster_interval_edge_cases() -> None:
    assert math.isnan(cluster_bootstrap_ci([], []).mean)
    with pytest.raises(ValueError, match="differ in length"):
        cluster_bootstrap_ci([1.0], [1.0, 2.0])
