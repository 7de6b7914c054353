"""The report's tables, each renderable as Markdown (for reading), CSV (for programs) and LaTeX (for papers).

Numbers come from the run's `summary.json` as the runner computed them (means with 95% bootstrap CIs), so
the report never disagrees with the run's own `report.md`. LaTeX is a bare booktabs `tabular`, ready for
`\\input`, with every special character escaped.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmunlearn.metrics.bootstrap import Estimate
from mmunlearn.metrics.summary import pivot_csv, pivot_markdown
from mmunlearn.report.run_store import BEFORE, RunStore, SafetyTrack, UnlokTrack, first_seen

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: object) -> str:
    """`text` with LaTeX's special characters escaped (a leading `[` guarded so `\\\\` cannot eat it)."""
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return "{}" + out if out.startswith("[") else out


def _md(text: object) -> str:
    return str(text).replace("|", "\\|")


@dataclass
class Table:
    """A titled grid of text cells; subclasses decide how cells are made."""

    name: str  # file stem under report/tables/
    title: str
    note: str = ""

    def header(self) -> list[str]:
        raise NotImplementedError

    def body(self) -> list[list[str]]:
        raise NotImplementedError

    def markdown(self) -> str:
        lines = ["| " + " | ".join(_md(h) for h in self.header()) + " |", "|" + "---|" * len(self.header())]
        lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in self.body()]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.header())
        writer.writerows(self.body())
        return buf.getvalue()

    def latex(self) -> str:
        """A booktabs tabular: first column left-aligned, the rest right-aligned; missing cells read `--`."""
        header = self.header()

        def line(cells: Sequence[str]) -> str:
            return " & ".join("--" if c == "-" else latex_escape(c) for c in cells) + r" \\"

        out = [f"% {self.title}" + (f" ({self.note})" if self.note else ""),
               r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule", line(header), r"\midrule"]
        out += [line(row) for row in self.body()]
        out += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(out) + "\n"

    def formats(self) -> dict[str, str]:
        """File suffix -> content."""
        return {"md": self.markdown(), "csv": self.csv(), "tex": self.latex()}


@dataclass
class EstimateTable(Table):
    """Estimates pivoted rows x columns, each cell `mean [low, high]`; Markdown and CSV as `metrics.summary`."""

    estimates: dict[tuple[Hashable, Hashable], Estimate] = field(default_factory=dict)
    rows: list[Hashable] = field(default_factory=list)
    columns: list[Hashable] = field(default_factory=list)
    corner: str = ""
    fmt: str = "{:.2f}"

    def header(self) -> list[str]:
        return [self.corner, *(str(c) for c in self.columns)]

    def cell(self, row: Hashable, col: Hashable) -> str:
        est = self.estimates.get((row, col))
        return "-" if est is None or est.n == 0 else est.format(self.fmt)

    def body(self) -> list[list[str]]:
        return [[str(r), *(self.cell(r, c) for c in self.columns)] for r in self.rows]

    def markdown(self) -> str:
        return pivot_markdown(self.estimates, 0, 1, self.rows, self.columns, fmt=self.fmt, corner=self.corner)

    def csv(self) -> str:
        return pivot_csv(self.estimates, 0, 1, self.rows, self.columns, corner=self.corner)


@dataclass
class PlainTable(Table):
    """Ready-made text cells (mixed numbers and labels, as in the compute table)."""

    columns: list[str] = field(default_factory=list)
    cells: list[list[str]] = field(default_factory=list)

    def header(self) -> list[str]:
        return list(self.columns)

    def body(self) -> list[list[str]]:
        return [list(row) for row in self.cells]


def n_note(estimates: dict[Any, Estimate], unit: str) -> str:
    """'95% bootstrap CI over <unit>; n = a-b per cell': how much data is behind every number."""
    ns = [e.n for e in estimates.values() if e.n > 0]
    if not ns:
        return f"95% bootstrap CI over {unit}; no data"
    span = str(min(ns)) if min(ns) == max(ns) else f"{min(ns)}-{max(ns)}"
    return f"mean [95% bootstrap CI over {unit}]; n = {span} per cell"


def _with_before_first(values: Sequence[str]) -> list[str]:
    seen = first_seen(values)
    return ([BEFORE] if BEFORE in seen else []) + [v for v in seen if v != BEFORE]


def attack_success_table(track: UnlokTrack) -> EstimateTable:
    est = track.attack_success()
    rows = _with_before_first([*track.defenses, *(d for d, _ in est)])
    cols = first_seen([*track.attack_names, *(a for _, a in est)])
    rows = [r for r in rows if any((r, c) in est for c in cols)]
    return EstimateTable("unlok_attack_success", "UnLOK: attack success per defense and attack",
                         n_note(est, "facts") + "; none = before any defense", est, rows, cols,
                         corner="defense \\ attack")


def effects_table(track: UnlokTrack) -> EstimateTable:
    est = track.effects()
    rows = first_seen([*(d for d in track.defenses if d != BEFORE), *(d for d, _ in est)])
    cols = first_seen(m for _, m in est)
    return EstimateTable("unlok_effects", "UnLOK: effects of each defense",
                         n_note(est, "facts") + "; dacc_* = accuracy drop on that neighbourhood (lower is better)",
                         est, [r for r in rows if any((r, c) in est for c in cols)], cols, corner="defense")


def _difference_text(item: dict[str, Any]) -> str:
    if item.get("text"):
        return str(item["text"])
    diff = item.get("difference")
    if isinstance(diff, dict) and diff.get("mean") is not None:
        return Estimate.from_json(diff).format()
    return "-"


def questions_table(track: UnlokTrack) -> PlainTable | None:
    """The run's two research questions as one long table (paired differences the runner computed)."""
    questions = track.summary.get("questions")
    if not isinstance(questions, dict):
        return None
    cells = []
    for item in questions.get("multimodal_vs_single") or []:
        cells.append(["multimodal vs single modality", str(item.get("defense", "")),
                      f"multimodal - {item.get('versus', '')}", _difference_text(item),
                      "yes" if item.get("significant") else "no"])
    for item in questions.get("hidden_state_vs_fact_erasure") or []:
        cells.append(["hidden-state defense vs fact erasure", str(item.get("defense", "")),
                      f"{item.get('attack', '')}: {item.get('defense', '')} - fact_erasure", _difference_text(item),
                      "yes" if item.get("significant") else "no"])
    if not cells:
        return None
    return PlainTable("unlok_questions", "UnLOK: paired differences in attack success",
                      "differences paired by fact, 95% bootstrap CI", columns=[
                          "question", "defense", "difference", "mean [95% CI]", "CI excludes 0"], cells=cells)


def safety_asr_tables(track: SafetyTrack) -> list[EstimateTable]:
    """One run x suite table per judge (judges disagree, so they are never pooled)."""
    asr = track.asr()
    tables = []
    for judge in first_seen([*track.judges, *(j for j, _, _ in asr)]):
        est = {(run, suite): e for (j, run, suite), e in asr.items() if j == judge}
        if not est:
            continue
        rows = first_seen([*track.runs, *(r for r, _ in est)])
        cols = first_seen([*track.suites, *(s for _, s in est)])
        tables.append(EstimateTable(f"safety_asr_{judge}", f"Safety: attack success rate, judge {judge}",
                                    n_note(est, "requests"), est, [r for r in rows if any((r, c) in est for c in cols)],
                                    cols, corner="run \\ suite"))
    return tables


def utility_table(track: SafetyTrack) -> EstimateTable | None:
    est = track.utility_estimates()
    if not est:
        return None
    rows = first_seen([*track.runs, *(r for r, _ in est)])
    cols = first_seen(m for _, m in est)
    return EstimateTable("safety_utility", "Safety: utility per run",
                         n_note(est, "questions"),
                         est, [r for r in rows if any((r, c) in est for c in cols)], cols, corner="run")


def checkpoint_label(run: str, step: int) -> str:
    """A row of the over-training tables: the run and the step its figures were measured after."""
    return f"{run} @ {step}"


def checkpoint_tables(track: SafetyTrack) -> list[Table]:
    """ASR per judge and utility of every run at each evaluated step (`safety.eval_steps`; base = step 0)."""
    asr, utility = track.checkpoints()
    pairs = {(r, t) for _, r, t, _ in asr} | {(r, t) for r, t, _ in utility}
    runs = sorted(track.in_run_order(list({r for r, _ in pairs})), key=lambda r: r != "base")  # base (step 0) first
    keys = [(r, t) for r in runs for t in sorted(t for rr, t in pairs if rr == r)]
    rows = [checkpoint_label(*k) for k in keys]
    tables = []
    for judge in first_seen(j for j, _, _, _ in asr):
        est = {(checkpoint_label(r, t), s): e for (j, r, t, s), e in asr.items() if j == judge}
        cols = first_seen([*track.suites, *(s for _, s in est)])
        tables.append(EstimateTable(f"safety_checkpoints_asr_{judge}",
                                    f"Safety over training: attack success rate, judge {judge}",
                                    n_note(est, "requests"), est, rows, cols, corner="run @ step \\ suite"))
    if utility:
        est = {(checkpoint_label(r, t), m): e for (r, t, m), e in utility.items()}
        tables.append(EstimateTable("safety_checkpoints_utility", "Safety over training: utility",
                                    n_note(est, "questions"), est, rows, first_seen(m for _, _, m in utility),
                                    corner="run @ step"))
    spent = track.checkpoint_compute()
    if spent:
        tables.append(PlainTable("safety_checkpoints_compute", "Safety over training: training compute so far",
                                 "tokens and FLOPs of the training up to each step",
                                 columns=["run @ step", "text tokens", "image tokens", "FLOPs"],
                                 cells=[[checkpoint_label(c["run"], c["step"]), _compute_cell(c["text_tokens"], "int"),
                                         _compute_cell(c["image_tokens"], "int"), _compute_cell(c["flops"], "{:.3g}")]
                                        for c in spent]))
    return tables


def _compute_cell(value: Any, fmt: str) -> str:
    """A compute value: numbers with `fmt` (integers stay exact), None/NaN as "-", anything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if fmt == "int":
        return str(value) if isinstance(value, int) else f"{value:g}"
    return fmt.format(value)


COMPUTE_COLUMNS = (("loss", "loss", "{}"), ("data", "forget data", "{}"), ("steps", "steps", "int"),
                   ("text_tokens", "text tokens", "int"), ("image_tokens", "image tokens", "int"),
                   ("flops", "FLOPs", "{:.3g}"), ("seconds", "seconds", "{:.1f}"))


def compute_table(track: SafetyTrack) -> PlainTable | None:
    """Training cost of every trained run (columns the runner did not record are left out)."""
    compute = track.compute()
    if not compute:
        return None
    present = [c for c in COMPUTE_COLUMNS if any(c[0] in v for v in compute.values())]
    cells = [[run, *(_compute_cell(compute[run].get(key), fmt) for key, _, fmt in present)]
             for run in track.in_run_order(list(compute))]
    return PlainTable("safety_compute", "Safety: training compute per run", "one training run each",
                      columns=["run", *(label for _, label, _ in present)], cells=cells)


def compute_ratio_table(track: SafetyTrack) -> PlainTable | None:
    ratios = track.summary.get("compute_ratios") or []
    if not isinstance(ratios, list) or not ratios:
        return None

    def times(value: Any) -> str:
        return "-" if not isinstance(value, (int, float)) else f"{value:.2f}x"

    cells = [[str(r.get("loss", "")), f"{r.get('multimodal_run', '')} / {r.get('text_run', '')}",
              times(r.get("flops")), times(r.get("tokens"))] for r in ratios if isinstance(r, dict)]
    return PlainTable("safety_compute_ratios", "Safety: cost of multimodal over textual unlearning",
                      "per loss trained both ways", columns=["loss", "runs", "FLOPs", "tokens"], cells=cells)


def asr_change_table(track: SafetyTrack) -> PlainTable | None:
    changes = track.summary.get("asr_changes") or []
    if not isinstance(changes, list) or not changes:
        return None
    cells = [[str(c.get("run", "")), str(c.get("judge", "")), str(c.get("suite", "")),
              str(c.get("text") or (Estimate.from_json(c["change"]).format() if isinstance(c.get("change"), dict)
                                    else "-")),
              "yes" if c.get("significant") else "no"] for c in changes if isinstance(c, dict)]
    return PlainTable("safety_asr_changes", "Safety: ASR change against the base model",
                      "paired by request, 95% bootstrap CI", columns=["run", "judge", "suite", "change [95% CI]",
                                                                      "CI excludes 0"], cells=cells)


def early_stop_table(track: SafetyTrack) -> PlainTable | None:
    """`safety.early_stop`: each trained run's validation ASR at every check and the step it stopped at."""
    early = track.early_stop()
    if early is None:
        return None
    rule, runs = early
    cells = [[run, ", ".join(f"{c.get('step')}: {c.get('asr', float('nan')):.2f}" for c in runs[run]["checks"]) or "-",
              "no (all steps)" if runs[run].get("stopped_at") is None else str(runs[run]["stopped_at"])]
             for run in track.in_run_order(list(runs))]
    suites = ", ".join(rule.get("suites") or []) or "every suite"
    return PlainTable("safety_early_stop", "Safety: early stopping on held-out requests",
                      f"every {rule.get('every')} steps, judge {rule.get('judge')}, {suites}, "
                      f"{rule.get('validation_requests')} requests the tables do not report; stop at ASR <= "
                      f"{rule.get('max_asr')}", columns=["run", "validation ASR at each check", "stopped at step"],
                      cells=cells)


def unlok_tables(track: UnlokTrack) -> list[Table]:
    tables: list[Table | None] = [attack_success_table(track), effects_table(track), questions_table(track)]
    return [t for t in tables if t is not None and t.body()]


def safety_tables(track: SafetyTrack) -> list[Table]:
    tables: list[Table | None] = [*safety_asr_tables(track), asr_change_table(track), utility_table(track),
                                  compute_table(track), compute_ratio_table(track), early_stop_table(track),
                                  *checkpoint_tables(track)]
    return [t for t in tables if t is not None and t.body()]


def all_tables(store: RunStore) -> list[Table]:
    """Every table of the run, UnLOK first; an absent track contributes none."""
    return [*(unlok_tables(store.unlok) if store.unlok else []),
            *(safety_tables(store.safety) if store.safety else [])]
