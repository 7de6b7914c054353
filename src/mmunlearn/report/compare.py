"""Compare two runs cell by cell: the difference B - A with a 95% bootstrap CI, recomputed from the samples.

A difference is paired when both runs measured the same items (facts for UnLOK, requests or questions for
safety): the item-level differences are resampled, so item difficulty cancels out. Otherwise the two runs
are resampled independently (unpaired), which gives a wider interval. Every row says which it used, and
the comparison lists cells that only one run has and the config keys that differ, so a difference is
never read without knowing what changed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmunlearn.metrics.bootstrap import Estimate, bootstrap_ci, is_significant, paired_difference_ci
from mmunlearn.report.run_store import BEFORE, RunStore, as_float, first_seen

N_RESAMPLES = 2000
MAX_CONFIG_DIFFS = 40


def unpaired_difference_ci(a: Sequence[float], b: Sequence[float], n_resamples: int = N_RESAMPLES,
                           confidence: float = 0.95, seed: int = 0) -> Estimate:
    """mean(b) - mean(a) with a percentile interval from resampling `a` and `b` independently.

    `n` is min(len(a), len(b)), the smaller sample limiting what the difference can say. Empty input gives
    an all-NaN estimate with n = 0.
    """
    left, right = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if left.size == 0 or right.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(right.mean() - left.mean())
    rng = np.random.default_rng(seed)
    diffs = (right[rng.integers(0, right.size, size=(n_resamples, right.size))].mean(axis=1)
             - left[rng.integers(0, left.size, size=(n_resamples, left.size))].mean(axis=1))
    tail = (1 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return Estimate(mean, float(low), float(high), int(min(left.size, right.size)))


@dataclass(frozen=True)
class CellDiff:
    """One compared cell: both runs' means and B - A with its interval and how it was computed."""

    key: tuple[Hashable, ...]
    a: Estimate
    b: Estimate
    difference: Estimate
    paired: bool


def _item_means(values: Iterable[tuple[Hashable, float]]) -> dict[Hashable, float]:
    """Item -> mean value (an item seen more than once is averaged, so each item weighs once)."""
    sums: dict[Hashable, list[float]] = {}
    for item, value in values:
        if not math.isnan(value):
            sums.setdefault(item, []).append(value)
    return {item: float(np.mean(v)) for item, v in sums.items()}


def compare_cell(key: tuple[Hashable, ...], a: dict[Hashable, float], b: dict[Hashable, float],
                 seed: int = 0) -> CellDiff:
    """B - A for one cell: paired by item when both runs have exactly the same items, else unpaired."""
    est_a = bootstrap_ci(list(a.values()), seed=seed)
    est_b = bootstrap_ci(list(b.values()), seed=seed)
    if a and set(a) == set(b):
        items = sorted(a, key=str)
        diff = paired_difference_ci([b[i] for i in items], [a[i] for i in items], n_resamples=N_RESAMPLES, seed=seed)
        return CellDiff(key, est_a, est_b, diff, True)
    return CellDiff(key, est_a, est_b, unpaired_difference_ci(list(a.values()), list(b.values()), seed=seed), False)


def _cells(rows: Iterable[tuple[tuple[Hashable, ...], Hashable, float]]) -> dict[tuple[Hashable, ...],
                                                                                 dict[Hashable, float]]:
    grouped: dict[tuple[Hashable, ...], list[tuple[Hashable, float]]] = {}
    for key, item, value in rows:
        grouped.setdefault(key, []).append((item, value))
    return {key: _item_means(values) for key, values in grouped.items()}


def unlok_cells(store: RunStore) -> dict[tuple[Hashable, ...], dict[Hashable, float]]:
    """(defense, attack) -> fact -> attack success."""
    if store.unlok is None:
        return {}
    return _cells(((r["defense"], r["attack"]), r["fact"], as_float(r["success"])) for r in store.unlok.attacks())


def _harmful_cells(attacks: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], tuple[Hashable, ...]]
                   ) -> dict[tuple[Hashable, ...], dict[Hashable, float]]:
    """(*key(row), judge) -> request -> judged harmful (ASR)."""
    rows = []
    for r in attacks:
        judges = [k.split("/", 1)[1] for k in r if k.startswith("asr/")] or list(r["verdicts"])
        for judge in judges:
            value = r.get(f"asr/{judge}")
            if value is None:
                value = (r["verdicts"].get(judge) or {}).get("harmful")
            rows.append(((*key(r), judge), r["prompt"], as_float(value)))
    return _cells(rows)


def _correct_cells(utility: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], tuple[Hashable, ...]]
                   ) -> dict[tuple[Hashable, ...], dict[Hashable, float]]:
    """key(row) -> question -> correct (questions asked twice are averaged)."""
    return _cells((key(r), r.get("question", i), as_float(r["correct"])) for i, r in enumerate(utility))


def safety_cells(store: RunStore) -> dict[tuple[Hashable, ...], dict[Hashable, float]]:
    """(run, suite, judge) -> request -> judged harmful (ASR)."""
    if store.safety is None:
        return {}
    return _harmful_cells(store.safety.attacks(), lambda r: (r["run"], r["suite"]))


def utility_cells(store: RunStore) -> dict[tuple[Hashable, ...], dict[Hashable, float]]:
    """(run, measure) -> question -> correct (questions asked twice are averaged)."""
    if store.safety is None:
        return {}
    return _correct_cells(store.safety.utility(), lambda r: (r["run"], r["measure"]))


def checkpoint_cells(store: RunStore) -> dict[tuple[Hashable, ...], dict[Hashable, float]]:
    """(run, step, suite, judge) -> request -> judged harmful, after the steps of `safety.eval_steps`."""
    if store.safety is None:
        return {}
    return _harmful_cells(store.safety.checkpoint_attacks(), lambda r: (r["run"], r["step"], r["suite"]))


def checkpoint_utility_cells(store: RunStore) -> dict[tuple[Hashable, ...], dict[Hashable, float]]:
    """(run, step, measure) -> question -> correct, after the steps of `safety.eval_steps`."""
    if store.safety is None:
        return {}
    return _correct_cells(store.safety.checkpoint_rows("utility"),
                          lambda r: (r["run"], r["step"], r["measure"]))


def compare_cells(a: dict[tuple[Hashable, ...], dict[Hashable, float]],
                  b: dict[tuple[Hashable, ...], dict[Hashable, float]],
                  seed: int = 0) -> tuple[list[CellDiff], list[tuple[Hashable, ...]], list[tuple[Hashable, ...]]]:
    """Diffs of the cells both have (in A's order), then the cells only A and only B have."""
    both = [k for k in a if k in b]
    return ([compare_cell(k, a[k], b[k], seed) for k in both], [k for k in a if k not in b],
            [k for k in b if k not in a])


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def config_differences(a: RunStore, b: RunStore) -> list[tuple[str, Any, Any]]:
    """Config keys whose values differ (missing on one side reads as `<absent>`), sorted by key."""
    left, right = _flatten(a.manifest.get("config") or {}), _flatten(b.manifest.get("config") or {})
    absent = "<absent>"
    return [(k, left.get(k, absent), right.get(k, absent)) for k in sorted(set(left) | set(right))
            if left.get(k, absent) != right.get(k, absent)]


def _fmt(est: Estimate) -> str:
    return "-" if est.n == 0 else est.format()


def _diff_table(labels: Sequence[str], diffs: Sequence[CellDiff], unit: str) -> list[str]:
    head = [*labels, "A", "B", "B - A [95% CI]", "CI excludes 0", f"pairing ({unit})", "n A / B"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in diffs:
        pairing = "paired" if d.paired else "unpaired"
        lines.append("| " + " | ".join([*(str(k).replace("|", "\\|") for k in d.key), _fmt(d.a), _fmt(d.b),
                                         _fmt(d.difference), "yes" if is_significant(d.difference) else "no",
                                         pairing, f"{d.a.n} / {d.b.n}"]) + " |")
    return lines


def _section(title: str, labels: Sequence[str], unit: str, a: dict, b: dict, seed: int) -> list[str]:
    if not a and not b:
        return []
    diffs, only_a, only_b = compare_cells(a, b, seed)
    lines = [f"## {title}", ""]
    if diffs:
        lines += _diff_table(labels, diffs, unit)
    else:
        lines.append("No cell is in both runs.")
    for which, keys in (("A", only_a), ("B", only_b)):
        if keys:
            lines += ["", f"Only in run {which}: " + ", ".join("/".join(str(x) for x in k) for k in keys) + "."]
    return [*lines, ""]


def _sort_before_first(cells: dict[tuple[Hashable, ...], Any]) -> dict[tuple[Hashable, ...], Any]:
    order = first_seen([BEFORE, *(k[0] for k in cells)])
    return dict(sorted(cells.items(), key=lambda kv: order.index(kv[0][0])))


def _header(a: RunStore, b: RunStore) -> list[str]:
    lines = ["# Comparison of two runs: B - A", ""]
    for name, store in (("A", a), ("B", b)):
        d = store.describe()
        lines.append(f"- **{name}**: `{d['path']}` (model {d['model'] or '?'}, commit {d['git_sha'] or '?'}, "
                     f"finished {d['finished'] or '?'})")
    lines += ["", "Each row: both runs' means [95% bootstrap CI] and the difference B - A. *Paired*: both runs "
              "measured the same items, so per-item differences are resampled; *unpaired*: the runs are "
              "resampled independently (wider interval).", ""]
    return lines


def _config_section(a: RunStore, b: RunStore) -> list[str]:
    diffs = config_differences(a, b)
    lines = ["## Config differences", ""]
    if not diffs:
        return [*lines, "The resolved configs are identical.", ""]
    lines += ["| key | A | B |", "|---|---|---|"]

    def show(value: Any) -> str:
        return json.dumps(value, default=str).replace("|", "\\|")

    lines += [f"| {k} | {show(va)} | {show(vb)} |" for k, va, vb in diffs[:MAX_CONFIG_DIFFS]]
    if len(diffs) > MAX_CONFIG_DIFFS:
        lines.append(f"\n... and {len(diffs) - MAX_CONFIG_DIFFS} more.")
    return [*lines, ""]


def compare_runs(a: RunStore | Path | str, b: RunStore | Path | str, seed: int = 0) -> str:
    """The Markdown comparison of run B against run A (paths or loaded stores)."""
    run_a = a if isinstance(a, RunStore) else RunStore(a)
    run_b = b if isinstance(b, RunStore) else RunStore(b)
    lines = _header(run_a, run_b)
    lines += _section("UnLOK: attack success", ["defense", "attack"], "facts",
                      _sort_before_first(unlok_cells(run_a)), unlok_cells(run_b), seed)
    lines += _section("Safety: attack success rate", ["run", "suite", "judge"], "requests",
                      safety_cells(run_a), safety_cells(run_b), seed)
    lines += _section("Safety: utility", ["run", "measure"], "questions", utility_cells(run_a),
                      utility_cells(run_b), seed)
    # after the training steps of `safety.eval_steps`: only when a run has them
    lines += _section("Safety over training: attack success rate", ["run", "step", "suite", "judge"], "requests",
                      checkpoint_cells(run_a), checkpoint_cells(run_b), seed)
    lines += _section("Safety over training: utility", ["run", "step", "measure"], "questions",
                      checkpoint_utility_cells(run_a), checkpoint_utility_cells(run_b), seed)
    lines += _config_section(run_a, run_b)
    return "\n".join(lines).rstrip() + "\n"
