"""Rows of the safety experiment -> ASR per run x suite per judge, utility, compute and their comparisons.

ASR is the share of attacked requests judged harmful, with a percentile-bootstrap 95% CI over requests: a
suite that attacks each request several ways (jailbreak templates, image kinds) scores a request by the mean
of its variants, so its variants, which share the request, are not counted as independent draws. Changes
against the base model are paired by request. The compute ratio compares, for each loss, the run
trained on image+text forget data with the run trained on text only.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from mmunlearn.judges.agreement import agreement_markdown, pairwise_agreement
from mmunlearn.judges.base import Verdict
from mmunlearn.metrics.bootstrap import is_significant, paired_difference_ci
from mmunlearn.metrics.summary import group_estimates, pivot_markdown


def request_asr(rows: Sequence[dict[str, Any]], judge: str,
                by: Sequence[str] = ("run", "suite")) -> list[dict[str, Any]]:
    """One row per (run, suite, request), or per `by` and request: the mean verdict over the request's attack
    variants there."""
    hits: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for r in rows:
        if r["type"] == "attack":
            hits[(*(r[k] for k in by), r["prompt"])].append(r[f"asr/{judge}"])
    return [{**dict(zip(by, key[:-1])), "prompt": key[-1], "asr": sum(v) / len(v)} for key, v in hits.items()]


def _by_prompt(requests: Sequence[dict[str, Any]], run: str, suite: str) -> dict[str, float]:
    return {r["prompt"]: r["asr"] for r in requests if r["run"] == run and r["suite"] == suite}


def asr_changes(requests: dict[str, list[dict[str, Any]]], runs: Sequence[str], suites: Sequence[str],
                seed: int) -> list[dict[str, Any]]:
    """ASR after each run minus the base model's, per suite and judge, paired by request (`requests`: each
    judge's `request_asr` rows)."""
    out = []
    if "base" not in runs:
        return out
    judges = list(requests)
    for run in [r for r in runs if r != "base"]:
        for judge in judges:
            for suite in suites:
                after, before = _by_prompt(requests[judge], run, suite), _by_prompt(requests[judge], "base", suite)
                keys = sorted(set(after) & set(before))
                if keys:
                    est = paired_difference_ci([after[k] for k in keys], [before[k] for k in keys], seed=seed)
                    out.append({"run": run, "judge": judge, "suite": suite, "change": est.to_json(),
                                "text": str(est), "significant": is_significant(est)})
    return out


def compute_ratios(compute: dict[str, Any], timings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Multimodal over textual cost for every loss trained both ways (wall time only when timings are given)."""
    out = []
    by_loss: dict[str, dict[str, str]] = {}
    for run, c in compute.items():
        by_loss.setdefault(c["loss"], {})[c["data"]] = run
    for loss, pair in sorted(by_loss.items()):
        if {"text", "multimodal"} <= set(pair):
            t_run, m_run = pair["text"], pair["multimodal"]
            t, m = compute[t_run], compute[m_run]
            ratio: dict[str, Any] = {"loss": loss, "text_run": t_run, "multimodal_run": m_run,
                                     "flops": m["flops"] / t["flops"] if t["flops"] else None,
                                     "tokens": (m["text_tokens"] + m["image_tokens"]) /
                                     max(1, t["text_tokens"] + t["image_tokens"])}
            if timings is not None:
                ts, ms = timings[t_run]["train_seconds"], timings[m_run]["train_seconds"]
                ratio["seconds"] = ms / ts if ts else None
            out.append(ratio)
    return out


def _agreement(rows: Sequence[dict[str, Any]], judges: Sequence[str]) -> list[dict[str, Any]]:
    attack = [r for r in rows if r["type"] == "attack"]
    if len(judges) < 2 or not attack:
        return []
    by_judge = {j: [Verdict.from_json(r["verdicts"][j]) for r in attack] for j in judges}
    return pairwise_agreement(by_judge)


def compute_markdown(compute: dict[str, Any], timings: dict[str, Any]) -> str:
    lines = ["| run | loss | forget data | steps | text tokens | image tokens | FLOPs | train seconds "
             "| peak memory (MB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run, c in compute.items():
        t = timings.get(run, {})
        lines.append(f"| {run} | {c['loss']} | {c['data']} | {c['steps']} | {c['text_tokens']} | {c['image_tokens']} "
                     f"| {c['flops']:.3g} | {t.get('train_seconds', float('nan')):.1f} "
                     f"| {t.get('peak_memory_mb', float('nan')):.0f} ({t.get('memory_kind', '-')}) |")
    ratios = compute_ratios(compute, timings)
    if ratios:
        lines += ["", "| loss | multimodal / text: FLOPs | wall time | tokens |", "|---|---|---|---|"]
        for r in ratios:
            fl = "-" if r["flops"] is None else f"{r['flops']:.2f}x"
            sec = "-" if r.get("seconds") is None else f"{r['seconds']:.2f}x"
            pair = f"{r['loss']} ({r['multimodal_run']} / {r['text_run']})"
            lines.append(f"| {pair} | {fl} | {sec} | {r['tokens']:.2f}x |")
    return "\n".join(lines)


def _changes_markdown(changes: list[dict[str, Any]], judge: str, runs: Sequence[str], suites: Sequence[str]) -> str:
    cell = {(c["run"], c["suite"]): c["text"] + (" *" if c["significant"] else "") for c in changes
            if c["judge"] == judge}
    rows = [r for r in runs if any((r, s) in cell for s in suites)]
    lines = ["| run \\ suite | " + " | ".join(suites) + " |", "|---" * (len(suites) + 1) + "|"]
    lines += [f"| {r} | " + " | ".join(cell.get((r, s), "-") for s in suites) + " |" for r in rows]
    return "\n".join(lines)


def summarize_safety(rows: Sequence[dict[str, Any]], runs: Sequence[str], suites: Sequence[str],
                     judges: Sequence[str], compute: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Every estimate with its CI; no timings, so the same seed and config give the same summary."""
    asr: dict[str, Any] = {}
    tables: dict[str, str] = {}
    requests = {judge: request_asr(rows, judge) for judge in judges}
    for judge in judges:
        est = group_estimates(requests[judge], ("run", "suite"), "asr", seed=seed)
        asr[judge] = [{"run": r, "suite": s, **e.to_json()} for (r, s), e in est.items()]
        tables[f"asr/{judge}"] = pivot_markdown(est, 0, 1, row_order=list(runs), col_order=list(suites),
                                                corner="run \\ suite")
    utility_rows = [r for r in rows if r["type"] == "utility"]
    util_est = group_estimates(utility_rows, ("run", "measure"), "correct", seed=seed)
    measures = list(dict.fromkeys(r["measure"] for r in utility_rows))
    tables["utility"] = pivot_markdown(util_est, 0, 1, row_order=list(runs), col_order=measures, corner="run")
    changes = asr_changes(requests, runs, suites, seed)
    agreement = _agreement(rows, judges)
    tables["agreement"] = agreement_markdown(agreement) if agreement else ""
    for judge in judges:
        tables[f"changes/{judge}"] = _changes_markdown(changes, judge, runs, suites)
    return {"asr": asr, "utility": [{"run": r, "measure": m, **e.to_json()} for (r, m), e in util_est.items()],
            "asr_changes": changes, "compute": compute, "compute_ratios": compute_ratios(compute),
            "agreement": agreement, "tables": tables}


def summarize_checkpoints(rows: Sequence[dict[str, Any]], checkpoint_rows: Sequence[dict[str, Any]],
                          runs: Sequence[str], suites: Sequence[str], judges: Sequence[str],
                          last_step: Mapping[str, int], seed: int = 0, compute: dict[str, Any] | None = None,
                          checkpoint_compute: dict[str, dict[int, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """ASR (per judge) and utility of every trained run at each evaluated step: the `safety.eval_steps`
    checkpoints (`checkpoint_rows`, each with its `step`) and each run's last step (`last_step`: where it stopped;
    `rows`, the main tables' figures), with the base model as step 0 of every run. Intervals as in
    `summarize_safety`, over requests / questions. With the runs' `compute` and `checkpoint_compute` (run -> step
    -> tokens and FLOPs so far), the training cost up to each step too, so runs can be compared at the step where
    each reaches an ASR."""
    trained = [r for r in runs if r != "base"]
    last = last_step
    staged = [*({**r, "step": 0} for r in rows if r["run"] == "base"),
              *(r for r in checkpoint_rows if r["step"] < last[r["run"]]),  # a run stopped at a checkpoint: once
              *({**r, "step": last[r["run"]]} for r in rows if r["run"] != "base")]
    steps = sorted({r["step"] for r in staged})
    order = [("base", 0)] * ("base" in runs) + [(run, step) for run in trained for step in steps
                                                   if 0 < step <= last[run]]

    def label(run: str, step: int) -> str:
        return f"{run} @ {step}"

    asr: dict[str, Any] = {}
    tables: dict[str, str] = {}
    for judge in judges:
        est = group_estimates(request_asr(staged, judge, ("run", "step", "suite")), ("run", "step", "suite"), "asr",
                              seed=seed)
        asr[judge] = [{"run": r, "step": t, "suite": s, **e.to_json()} for (r, t, s), e in est.items()]
        tables[f"asr/{judge}"] = pivot_markdown({(label(r, t), s): e for (r, t, s), e in est.items()}, 0, 1,
                                                row_order=[label(*k) for k in order], col_order=list(suites),
                                                corner="run @ step \\ suite")
    utility_rows = [r for r in staged if r["type"] == "utility"]
    util = group_estimates(utility_rows, ("run", "step", "measure"), "correct", seed=seed)
    tables["utility"] = pivot_markdown({(label(r, t), m): e for (r, t, m), e in util.items()}, 0, 1,
                                       row_order=[label(*k) for k in order],
                                       col_order=list(dict.fromkeys(r["measure"] for r in utility_rows)),
                                       corner="run @ step")
    spent = [{"run": run, "step": step, **{k: c[k] for k in ("text_tokens", "image_tokens", "flops")}}
             for run in trained for step, c in sorted({**(checkpoint_compute or {}).get(run, {}),
                                                       **({last[run]: compute[run]} if compute and run in compute
                                                          else {})}.items())]
    if spent:
        tables["compute"] = "\n".join(["| run @ step | text tokens | image tokens | FLOPs |", "|---|---|---|---|",
                                       *(f"| {label(c['run'], c['step'])} | {c['text_tokens']} | "
                                         f"{c['image_tokens']} | {c['flops']:.3g} |" for c in spent)]) + "\n"
    return {"steps": steps, "asr": asr,
            "utility": [{"run": r, "step": t, "measure": m, **e.to_json()} for (r, t, m), e in util.items()],
            "compute": spent, "tables": tables}


def early_stop_summary(rule: Any, checks: Mapping[str, Sequence[dict[str, Any]]], last_steps: Mapping[str, int],
                       max_steps: int, n_validation: int) -> dict[str, Any]:
    """The stopping rule, the validation ASR at each check of every trained run, and where each stopped (None:
    it trained all `max_steps`)."""
    return {"rule": {**dataclasses.asdict(rule), "validation_requests": n_validation},
            "runs": {run: {"checks": list(checks.get(run, [])),
                           "stopped_at": last_steps[run] if last_steps[run] < max_steps else None}
                     for run in last_steps}}


def early_stop_markdown(early_stop: dict[str, Any]) -> str:
    """report.md's section on `safety.early_stop`."""
    rule = early_stop["rule"]
    lines = ["## Early stopping (`safety.early_stop`)", "",
             f"Every {rule['every']} steps, ASR by `{rule['judge']}` on {rule['validation_requests']} held-out harmful "
             f"requests outside the attacked ones ({', '.join(rule['suites']) if rule['suites'] else 'every suite'});"
             f" training stops once it is at most {rule['max_asr']:g}. The tables above are at the step each run "
             f"stopped.", "", "| run | validation ASR at each check | stopped at step |", "|---|---|---|"]
    for run, r in early_stop["runs"].items():
        checks = ", ".join(f"{c['step']}: {c['asr']:.2f}" for c in r["checks"]) or "-"
        lines.append(f"| {run} | {checks} | {r['stopped_at'] if r['stopped_at'] is not None else 'no (all steps)'} |")
    return "\n".join(lines) + "\n"


def checkpoints_markdown(checkpoints: dict[str, Any], judges: Sequence[str]) -> str:
    """report.md's section on the runs over training (`safety.eval_steps`)."""
    tables = checkpoints["tables"]
    return "\n".join([
        "## Over training (`safety.eval_steps`; step 0 = the base model)", "",
        *[f"### Attack success rate, judge `{j}`\n\n{tables[f'asr/{j}']}\n" for j in judges],
        "### Utility", "", tables["utility"],
        *(["### Training compute so far", "", tables["compute"]] if tables.get("compute") else [])])


def safety_report(summary: dict[str, Any], judges: Sequence[str], runs: Sequence[str], suites: Sequence[str],
                  timings: dict[str, Any]) -> str:
    """report.md: the summary's tables plus the compute table with this machine's wall times."""
    tables = summary["tables"]
    return "\n".join([
        f"# Safety: textual vs multimodal unlearning on {summary.get('model', '')}", "",
        *[f"## Attack success rate, judge `{j}` (95% bootstrap CI over requests)\n\n{tables[f'asr/{j}']}\n"
          for j in judges],
        *([f"Suites that built no attack from these requests ('-' above): "
           f"{', '.join(summary['suites_without_inputs'])}.", ""] if summary.get("suites_without_inputs") else []),
        "## Utility (accuracy; `over_refusal` = share of benign requests refused, lower is better)", "",
        tables["utility"], "", "## Training compute", "", compute_markdown(summary["compute"], timings), "",
        *(["## Judge agreement", "", tables["agreement"], ""] if tables.get("agreement") else []),
        *[f"## ASR change against the base model, judge `{j}` (paired by request; * = CI excludes 0)\n\n"
          f"{tables[f'changes/{j}']}\n" for j in judges],
        *([early_stop_markdown(summary["early_stop"])] if summary.get("early_stop") else []),
        *([checkpoints_markdown(summary["checkpoints"], judges)] if summary.get("checkpoints") else [])])
