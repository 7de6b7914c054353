"""The report's figures as PNG files, drawn with matplotlib's Agg renderer.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot), so no global backend or figure
state is touched and plotting works headless and in threads. Every function returns the written path, or
None when the run has no data for that figure (a track or an attack that was not run).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from mmunlearn.metrics.bootstrap import Estimate, bootstrap_ci
from mmunlearn.report.run_store import BEFORE, RunStore, SafetyTrack, UnlokTrack, as_float, first_seen

MAX_LABELLED_SERIES = 4  # bars per group that still leave room for a value label each
LENS_ATTACK = "hp"  # the logit-lens attack whose rows carry the answer's rank at every hidden state
TRADEOFF_METRICS = (("dacc_neighbour_question", "dAcc on neighbour questions"), ("dacc_random", "dAcc on random facts"))


@dataclass(frozen=True)
class Plot:
    """A written figure and what it shows (for the HTML caption)."""

    name: str
    title: str
    caption: str
    path: Path


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110, metadata={"Software": None})
    return path


_PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
            "#ccb974", "#64b5cd"]


def _colors(n: int) -> list[str]:
    return [_PALETTE[i % len(_PALETTE)] for i in range(n)]


def _bars(ax: Any, groups: Sequence[Hashable], series: Sequence[Hashable],
          cells: dict[tuple[Hashable, Hashable], Estimate]) -> None:
    """Grouped bars: one group per `groups` entry, one bar per `series` entry, CI whiskers; empty cells gaps."""
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (name, color) in enumerate(zip(series, _colors(len(series)))):
        ests = [cells.get((g, name)) for g in groups]
        means = np.array([e.mean if e is not None and e.n > 0 else np.nan for e in ests])
        lows = np.array([e.mean - e.low if e is not None and e.n > 0 else 0.0 for e in ests])
        highs = np.array([e.high - e.mean if e is not None and e.n > 0 else 0.0 for e in ests])
        offset = x - 0.4 + width * (i + 0.5)
        ok = ~np.isnan(means)  # a missing cell is a gap, never a zero-height bar that reads as 0
        bars = ax.bar(offset[ok], means[ok], width, color=color, label=str(name),
                      yerr=np.nan_to_num(np.vstack([lows[ok], highs[ok]])), capsize=2, error_kw={"lw": 0.8})
        zero = ok & (means == 0)  # a dot on the axis tells a zero bar from a missing cell
        if zero.any():  # (an empty unclipped line would break the constrained layout)
            ax.plot(offset[zero], means[zero], "o", ms=3, color=color, clip_on=False)
        if len(series) <= MAX_LABELLED_SERIES:
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x)
    ax.set_xticklabels([str(g) for g in groups], rotation=20 if len(groups) > 4 else 0, ha="right"
                       if len(groups) > 4 else "center")
    ax.set_ylim(-0.03, 1.12)  # room for zero dots below and value labels above whiskers reaching 1
    ax.grid(axis="y", alpha=0.3)


def attack_success_plot(track: UnlokTrack, path: Path) -> Path | None:
    """Grouped bars: attack success per defense (groups) and attack (bars), with 95% CIs over facts."""
    est = track.attack_success()
    if not est:
        return None
    defenses = [d for d in track.defenses if any(k[0] == d for k in est)]
    defenses += [d for d in first_seen(d for d, _ in est) if d not in defenses]
    attacks = first_seen([*track.attack_names, *(a for _, a in est)])
    fig = Figure(figsize=(max(6.0, 1.2 * len(defenses) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    _bars(ax, defenses, attacks, est)
    ax.set_ylabel("attack success (share of facts)")
    ax.set_xlabel("defense (none = before editing)")
    ax.set_title("Attack success per defense and attack (95% CI)", fontsize="medium")
    ax.legend(title="attack", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def lens_ranks(track: UnlokTrack) -> dict[str, np.ndarray]:
    """Defense -> facts x hidden states array of the answer token's rank (NaN where unknown).

    Uses `rank_all_layers` of the logit-lens rows (hidden state 0 = embeddings); rows without it fall back
    to `rank_top` at the listed `layers`, other hidden states left NaN.
    """
    per_defense: dict[str, list[list[float]]] = {}
    width = 0
    for row in track.attacks():
        details = row.get("details") or {}
        if row["attack"] != LENS_ATTACK and "rank_all_layers" not in details:
            continue
        if isinstance(details.get("rank_all_layers"), list):
            ranks = [as_float(r) for r in details["rank_all_layers"]]
        elif isinstance(details.get("layers"), list) and isinstance(details.get("rank_top"), list):
            layers = [int(layer) for layer in details["layers"]]
            ranks = [math.nan] * (max(layers, default=-1) + 1)
            for layer, rank in zip(layers, details["rank_top"]):
                ranks[layer] = as_float(rank)
        else:
            continue
        width = max(width, len(ranks))
        per_defense.setdefault(row["defense"], []).append(ranks)
    return {d: np.array([r + [math.nan] * (width - len(r)) for r in rows]) for d, rows in per_defense.items()}


def logit_lens_plot(track: UnlokTrack, path: Path) -> Path | None:
    """Median rank (+1, log scale) of the answer token per hidden state, before and after each defense.

    Before editing the rank falls to 0 in the late layers; a defense that only hides the answer at the
    output leaves it near the top in middle layers, which is what the whitebox attacks read.
    """
    ranks = lens_ranks(track)
    if not ranks:
        return None
    order = [d for d in track.defenses if d in ranks] + [d for d in ranks if d not in track.defenses]
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    colors = iter(_colors(len(order)))
    for defense in order:
        matrix = ranks[defense]
        layers = np.arange(matrix.shape[1])
        known = ~np.all(np.isnan(matrix), axis=0)
        if not known.any():
            continue
        with np.errstate(all="ignore"):
            median = np.nanmedian(matrix[:, known], axis=0) + 1
            q1, q3 = (np.nanpercentile(matrix[:, known], q, axis=0) + 1 for q in (25, 75))
        before = defense == BEFORE
        color = "black" if before else next(colors)
        label = f"{defense} (before editing)" if before else defense
        ax.plot(layers[known], median, marker="o", ms=3, color=color, ls="--" if before else "-",
                label=f"{label}, n={matrix.shape[0]}", zorder=3 if before else 2)  # dashed, on top: never hidden
        ax.fill_between(layers[known], q1, q3, color=color, alpha=0.12, lw=0)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter())  # plain "60", not "6 x 10^1"
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    ax.set_xlabel("hidden state (0 = embeddings)")
    ax.set_ylabel("rank of the answer token + 1 (1 = top)")
    ax.set_title("Logit lens: rank of the answer per hidden state (median, IQR band)", fontsize="medium")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _save(fig, path)


def success_over_attacks(track: UnlokTrack, seed: int = 0) -> dict[str, Estimate]:
    """Defense -> mean over facts of each fact's success averaged over attacks, CI over facts."""
    per_fact: dict[str, dict[str, list[float]]] = {}
    for row in track.attacks():
        per_fact.setdefault(row["defense"], {}).setdefault(row["fact"], []).append(as_float(row["success"]))
    return {d: bootstrap_ci([float(np.mean(v)) for v in facts.values()], seed=seed) for d, facts in per_fact.items()}


def tradeoff_plot(track: UnlokTrack, path: Path) -> Path | None:
    """One point per defense: x = neighbourhood damage (dAcc), y = mean attack success over attacks.

    The bottom-left corner is the goal (knowledge gone, neighbours intact); `none` sits at dAcc 0.
    """
    effects = track.effects()
    success = success_over_attacks(track)
    metrics = [(m, label) for m, label in TRADEOFF_METRICS if any(k[1] == m for k in effects)]
    if not metrics or not success:
        return None
    fig = Figure(figsize=(5.2 * len(metrics), 4.3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)[0])
    defenses = [d for d in track.defenses if d in success]
    for ax, (metric, label) in zip(axes, metrics):
        stacked: dict[tuple[float, float], int] = {}  # labels of coinciding points are stacked, not overprinted
        for defense, color in zip(defenses, _colors(len(defenses))):
            y = success[defense]
            x = Estimate(0.0, 0.0, 0.0, y.n) if defense == BEFORE else effects.get((defense, metric))
            if x is None or x.n == 0 or y.n == 0:
                continue
            ax.errorbar([x.mean], [y.mean], xerr=[[x.mean - x.low], [x.high - x.mean]],
                        yerr=[[y.mean - y.low], [y.high - y.mean]], fmt="o", color="black" if defense == BEFORE
                        else color, capsize=3, ms=6)
            spot = (round(x.mean, 3), round(y.mean, 3))
            stacked[spot] = stacked.get(spot, -1) + 1
            ax.annotate(defense, (x.mean, y.mean), textcoords="offset points", xytext=(6, 5 + 11 * stacked[spot]),
                        fontsize="small")
        ax.set_xlabel(f"{label} (accuracy drop; lower is better)")
        ax.set_ylabel("attack success, mean over attacks")
        ax.set_ylim(-0.05, 1.05)
        ax.axvline(0, color="grey", lw=0.6)
        ax.grid(alpha=0.3)
    fig.suptitle("Knowledge removal vs neighbourhood damage (95% CIs over facts)", fontsize="medium")
    return _save(fig, path)


def safety_asr_plot(track: SafetyTrack, path: Path) -> Path | None:
    """Grouped bars per judge: ASR per attack suite (groups) for each run (bars; base = before unlearning)."""
    asr = track.asr()
    if not asr:
        return None
    judges = first_seen([*track.judges, *(j for j, _, _ in asr)])
    judges = [j for j in judges if any(k[0] == j for k in asr)]
    runs = first_seen([*track.runs, *(r for _, r, _ in asr)])
    suites = first_seen([*track.suites, *(s for _, _, s in asr)])
    fig = Figure(figsize=(max(6.0, 1.3 * len(suites) + 2), 3.6 * len(judges)), layout="constrained")
    axes = fig.subplots(len(judges), 1, squeeze=False)[:, 0]
    for ax, judge in zip(axes, judges):
        cells = {(suite, run): e for (j, run, suite), e in asr.items() if j == judge}
        _bars(ax, suites, [r for r in runs if any(k[1] == r for k in cells)], cells)
        ax.set_ylabel("attack success rate")
        ax.set_title(f"judge {judge}: ASR per attack suite (95% CI)", fontsize="medium")
        ax.legend(title="run", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1].set_xlabel("attack suite")
    return _save(fig, path)


def _lines(ax: Any, series: dict[Hashable, dict[int, Estimate]]) -> None:
    """One line per series over its steps, with its 95% CI as a band."""
    for (name, points), color in zip(series.items(), _colors(len(series))):
        steps = sorted(points)
        est = [points[t] for t in steps]
        ax.plot(steps, [e.mean for e in est], "o-", ms=3, lw=1.2, color=color, label=str(name))
        ax.fill_between(steps, [e.low for e in est], [e.high for e in est], color=color, alpha=0.15, lw=0)
    ax.set_ylim(-0.03, 1.03)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def safety_checkpoints_plot(track: SafetyTrack, path: Path) -> Path | None:
    """Per trained run (columns): ASR per suite (first judge) and utility per measure over the training steps
    evaluated (`safety.eval_steps`), the base model as step 0."""
    asr, utility = track.checkpoints()
    if not asr:
        return None
    judge = first_seen([*track.judges, *(j for j, _, _, _ in asr)])
    judge = [j for j in judge if any(k[0] == j for k in asr)][0]
    runs = [r for r in first_seen([*track.runs, *(r for _, r, _, _ in asr)]) if r != "base"
            and any(k[1] == r for k in asr)]
    suites = first_seen([*track.suites, *(s for _, _, _, s in asr)])
    measures = first_seen(m for _, _, m in utility)
    fig = Figure(figsize=(max(6.0, 3.2 * len(runs) + 1.8), 6.0), layout="constrained")
    axes = fig.subplots(2, len(runs), squeeze=False, sharey="row")
    for col, run in enumerate(runs):
        ax_asr, ax_util = axes[0, col], axes[1, col]
        _lines(ax_asr, {s: {t: e for (j, r, t, ss), e in asr.items() if j == judge and ss == s and r in (run, "base")}
                        for s in suites})
        _lines(ax_util, {m: {t: e for (r, t, mm), e in utility.items() if mm == m and r in (run, "base")}
                         for m in measures})
        ax_asr.set_title(run, fontsize="medium")
        ax_util.set_xlabel("training step")
    axes[0, 0].set_ylabel(f"ASR (judge {judge})")
    axes[1, 0].set_ylabel("utility")
    axes[0, -1].legend(title="suite", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[1, -1].legend(title="measure", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


PLOTS = (
    ("unlok_attack_success", "Attack success per defense",
     "Share of facts each attack recovers, per defense; whiskers are 95% bootstrap CIs over facts; a dot on "
     "the axis marks 0 (no bar and no dot: not measured)."),
    ("unlok_logit_lens", "Where the knowledge went",
     "Rank of the answer token read out of each hidden state (logit lens), median over facts with the "
     "inter-quartile band; log scale, 1 = the top token. Before editing (dashed) and after each defense."),
    ("unlok_tradeoff", "Removal vs neighbourhood damage",
     "Each defense as one point: attack success averaged over attacks against the accuracy drop on "
     "neighbouring questions / random facts. Lower left is better."),
    ("safety_asr", "Safety: ASR per attack suite",
     "Attack success rate per suite before (base) and after each run, per judge; 95% CIs over requests; a dot "
     "on the axis marks 0."),
    ("safety_checkpoints", "Safety: over training",
     "Each trained run evaluated after the steps of `safety.eval_steps` and its last step (step 0: the base "
     "model): ASR per suite by the first judge (top) and utility per measure (bottom), 95% CIs as bands. "
     "Choosing a step by these figures selects on the evaluation requests themselves."),
)


def all_plots(store: RunStore, out_dir: Path) -> list[Plot]:
    """Draw every figure the run has data for into `out_dir`; the list says which were written."""
    draw: dict[str, Any] = {}
    if store.unlok is not None:
        track = store.unlok
        draw["unlok_attack_success"] = lambda p: attack_success_plot(track, p)
        draw["unlok_logit_lens"] = lambda p: logit_lens_plot(track, p)
        draw["unlok_tradeoff"] = lambda p: tradeoff_plot(track, p)
    if store.safety is not None:
        safety = store.safety
        draw["safety_asr"] = lambda p: safety_asr_plot(safety, p)
        draw["safety_checkpoints"] = lambda p: safety_checkpoints_plot(safety, p)
    plots = []
    for name, title, caption in PLOTS:
        if name in draw:
            path = draw[name](out_dir / f"{name}.png")
            if path is not None:
                plots.append(Plot(name, title, caption, path))
    return plots
