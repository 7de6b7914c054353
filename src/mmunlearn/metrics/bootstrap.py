"""Percentile-bootstrap confidence intervals over items, deterministic given a seed.

Items (facts, prompts) are the unit of resampling: every per-item value is drawn with replacement, the mean
recomputed, and the interval read off the percentiles of those means. Paired differences reuse the same
drawn indices for both conditions, so item difficulty cancels out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

# Cap on values drawn per batch of resamples, so large item counts stay within modest memory.
_DRAW_BUDGET = 1 << 20


@dataclass(frozen=True)
class Estimate:
    """A mean with its confidence interval over `n` items; all NaN when `n == 0`."""

    mean: float
    low: float
    high: float
    n: int

    def format(self, fmt: str = "{:.2f}") -> str:
        """`mean [low, high]` with each number formatted by `fmt`."""
        return f"{fmt.format(self.mean)} [{fmt.format(self.low)}, {fmt.format(self.high)}]"

    def __str__(self) -> str:
        return self.format()

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN becomes None, since strict JSON has no NaN)."""
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {"mean": clean(self.mean), "low": clean(self.low), "high": clean(self.high), "n": self.n}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Estimate:
        """Inverse of `to_json`."""
        def num(x: float | None) -> float:
            return float("nan") if x is None else float(x)

        return cls(num(data["mean"]), num(data["low"]), num(data["high"]), int(data["n"]))


def _values(values: Sequence[float] | NDArray[Any], name: str = "values") -> NDArray[np.float64]:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN; drop or fill missing items first")
    return arr


def _check(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def _draws(n: int, n_resamples: int, seed: int) -> Iterator[NDArray[np.int64]]:
    """Resampled index rows [batch, n], in batches of at most `_DRAW_BUDGET` values."""
    rng = np.random.default_rng(seed)
    rows = max(1, _DRAW_BUDGET // n)
    for start in range(0, n_resamples, rows):
        yield rng.integers(0, n, size=(min(rows, n_resamples - start), n))


def _resampled_means(arr: NDArray[np.float64], n_resamples: int, seed: int) -> NDArray[np.float64]:
    return np.concatenate([arr[drawn].mean(axis=1) for drawn in _draws(arr.size, n_resamples, seed)])


def bootstrap_ci(values: Sequence[float] | NDArray[Any], n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> Estimate:
    """Mean of `values` with a percentile-bootstrap interval (booleans count as 0/1).

    `n == 0` gives an all-NaN estimate with `n=0` (an empty cell, not an error); a sample without spread
    (including `n == 1`) gives `low == high == mean`, as no resample can differ.
    """
    _check(n_resamples, confidence)
    arr = _values(values)
    if arr.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(arr.mean())
    if np.all(arr == arr[0]):
        return Estimate(mean, mean, mean, int(arr.size))
    tail = (1 - confidence) / 2
    low, high = np.quantile(_resampled_means(arr, n_resamples, seed), [tail, 1 - tail])
    return Estimate(mean, float(low), float(high), int(arr.size))


def cluster_bootstrap_ci(hits: Sequence[float] | NDArray[Any], counts: Sequence[float] | NDArray[Any],
                         n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Pooled rate sum(hits) / sum(counts) with an interval from resampling whole clusters.

    For items that come in correlated groups (several questions about one creature, one image of it): the
    clusters are drawn with replacement and the pooled rate recomputed, so the interval reflects how many
    independent clusters there are, not how many items. `n` is the number of clusters.
    """
    _check(n_resamples, confidence)
    h, c = _values(hits, "hits"), _values(counts, "counts")
    if h.size != c.size:
        raise ValueError(f"hits and counts differ in length: {h.size} vs {c.size}")
    if h.size == 0 or c.sum() <= 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    rate = float(h.sum() / c.sum())
    rates = [h[drawn].sum(axis=1) / np.maximum(c[drawn].sum(axis=1), 1e-12)
             for drawn in _draws(h.size, n_resamples, seed)]
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.concatenate(rates), [tail, 1 - tail])
    return Estimate(rate, float(low), float(high), int(h.size))


def paired_difference_ci(a: Sequence[float] | NDArray[Any], b: Sequence[float] | NDArray[Any],
                         n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of `a_i - b_i` with an interval from resampling items, the same indices for `a` and `b`.

    E.g. multimodal minus question-only attack success on the same facts. Resampling the differences is
    exactly resampling the pairs, so the pairing is kept.
    """
    left, right = _values(a, "a"), _values(b, "b")
    if left.size != right.size:
        raise ValueError(f"paired values differ in length: a has {left.size} items, b has {right.size}")
    return bootstrap_ci(left - right, n_resamples=n_resamples, confidence=confidence, seed=seed)


def is_significant(estimate: Estimate) -> bool:
    """True if the interval excludes 0 (NaN estimates never are)."""
    return bool(estimate.low > 0 or estimate.high < 0)
