"""The self-contained HTML report: provenance, tables, figures and a sample browser, from one Jinja2 template.

Self-contained means the report directory is all it needs: figures and sample images are files copied
beside `index.html` and referenced relatively; CSS and the filter script are inline; nothing is fetched
from the network. Autoescaping is on, so model outputs (which may contain markup) are shown, not run.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from mmunlearn.report.run_store import BEFORE, RunStore, SafetyTrack, Track, UnlokTrack, first_seen
from mmunlearn.report.tables import EstimateTable, Table

if TYPE_CHECKING:  # plots import matplotlib, which the CLI should not pay for at start-up
    from mmunlearn.report.plots import Plot

TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_LIMIT = 200  # facts / prompts in the sample browser; larger runs keep the page responsive
MAX_CANDIDATES = 8  # candidates shown per attack row (the rows store more)
SAFETY_BASELINE = "base"  # the safety run that is the model before unlearning
TIER_ORDER = ("easy", "medium", "hard")
PROBE_ORDER = ("fact", "paraphrase", "image", "neighbour_question", "neighbour_image", "random")


def _tier_key(tier: str) -> tuple[int, str]:
    return (TIER_ORDER.index(tier) if tier in TIER_ORDER else len(TIER_ORDER), tier)


def probe_key(name: str) -> tuple[int, int, str]:
    """Reading order of probes: the fact, its paraphrases, image tiers easy to hard, neighbours, random facts.

    Rows may store probes in any key order (e.g. sorted by the JSON writer), so the page imposes one.
    """
    group, _, key = name.partition("/")
    rank = PROBE_ORDER.index(group) if group in PROBE_ORDER else len(PROBE_ORDER)
    sub = int(key) if key.isdigit() else _tier_key(key)[0]
    return (rank, sub, key)


def environment() -> Environment:
    """The report's Jinja2 environment: autoescape on, undefined names are errors (no silent blanks)."""
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


class ImageCopier:
    """Copies a track's images into the report on first use and returns their relative URLs."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.copied: dict[Path, str] = {}

    def __call__(self, track: Track, ref: str | None) -> str | None:
        source = track.image_path(ref)
        if source is None:
            return None
        if source not in self.copied:
            rel = Path("images") / track.name / source.name
            (self.out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, self.out_dir / rel)
            self.copied[source] = rel.as_posix()
        return self.copied[source]


# ---------------------------------------------------------------------- UnLOK facts


def _dict(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else empty: a malformed optional field shows as absent."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _fact_images(track: UnlokTrack, record: dict[str, Any], copy: ImageCopier) -> list[dict[str, Any]]:
    images = [{"label": "original", "caption": str(record.get("answer", "")),
               "src": copy(track, record.get("image"))}]
    for tier, ref in sorted(_dict(record.get("paraphrase_images")).items(), key=lambda kv: _tier_key(kv[0])):
        images.append({"label": f"paraphrase {tier}", "caption": "same answer",
                       "src": copy(track, ref if isinstance(ref, str) else None)})
    for tier, item in sorted(_dict(record.get("neighbour_images")).items(), key=lambda kv: _tier_key(kv[0])):
        item = _dict(item)
        images.append({"label": f"neighbour {tier}", "caption": f"answer: {item.get('answer', '?')}",
                       "src": copy(track, item.get("image"))})
    return images


def _probe_prompt(name: str, record: dict[str, Any], records: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """What a probe asked and which answer it expects, from its name and the fact's record."""
    group, _, key = name.partition("/")
    question, answer = str(record.get("question", "")), str(record.get("answer", ""))
    if group == "paraphrase":
        paraphrases = _list(record.get("question_paraphrases"))
        index = int(key) if key.isdigit() else -1
        return (str(paraphrases[index]) if 0 <= index < len(paraphrases) else question), answer
    if group == "image":
        return f"{question} (on the {key} paraphrase image)", answer
    if group == "neighbour_question":
        items = _list(record.get("neighbour_questions"))
        index = int(key) if key.isdigit() else -1
        item = items[index] if 0 <= index < len(items) and isinstance(items[index], dict) else {}
        return str(item.get("question", name)), str(item.get("answer", ""))
    if group == "neighbour_image":
        item = _dict(_dict(record.get("neighbour_images")).get(key))
        return f"{question} (on the {key} neighbour image)", str(item.get("answer", ""))
    if group == "random":
        other = records.get(key, {})
        return str(other.get("question", f"fact {key}")), str(other.get("answer", ""))
    return question, answer


def _probes(track: UnlokTrack, measures: dict[str, dict[str, Any]], record: dict[str, Any],
            defenses: Sequence[str]) -> list[dict[str, Any]]:
    """Each probe's prompt, expected answer and the answer after each defense (`measures` by defense)."""
    names = sorted(first_seen(n for r in measures.values() for n in _dict(r["answers"])), key=probe_key)
    probes = []
    for name in names:
        prompt, expected = _probe_prompt(name, record, track.records)
        cells = []
        for defense in defenses:
            row = measures.get(defense)
            answers = _dict(row["answers"]) if row else {}
            correct = _dict(row.get("correct")).get(name) if row else None
            cells.append({"defense": defense, "answer": answers.get(name), "correct": correct})
        probes.append({"name": name, "prompt": prompt, "expected": expected, "cells": cells,
                       "random": name.startswith("random/")})
    return probes


def _attack_rows(attacks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in attacks:
        details = _dict(r.get("details"))
        ranks = details.get("rank_top")
        rows.append({"defense": r["defense"], "attack": r["attack"], "kind": r.get("kind", ""),
                     "success": bool(r["success"]), "budget": r.get("budget", ""),
                     "candidates": [str(c) for c in _list(r.get("candidates"))[:MAX_CANDIDATES]],
                     "n_candidates": len(_list(r.get("candidates"))),
                     "ranks": ", ".join("-" if x is None else str(x) for x in ranks) if isinstance(ranks, list) else "",
                     "layers": ", ".join(str(x) for x in _list(details.get("layers")))})
    return rows


def unlok_samples(track: UnlokTrack, copy: ImageCopier, limit: int) -> list[dict[str, Any]]:
    """One entry per fact (up to `limit`): images, question, paraphrases, answers per defense, attacks."""
    defenses = track.defenses
    measures: dict[str, dict[str, dict[str, Any]]] = {}
    for row in track.measures():
        measures.setdefault(row["fact"], {})[row["defense"]] = row
    attacks: dict[str, list[dict[str, Any]]] = {}
    for row in track.attacks():
        attacks.setdefault(row["fact"], []).append(row)
    facts = []
    for fact in track.facts[:limit]:
        record = track.records.get(fact, {"id": fact})
        facts.append({
            "id": fact, "subject": record.get("subject", ""), "question": record.get("question", ""),
            "answer": record.get("answer", ""), "alt_answer": record.get("alt_answer", ""),
            "aliases": [str(a) for a in _list(record.get("aliases"))],
            "paraphrases": [str(p) for p in _list(record.get("question_paraphrases"))],
            "neighbour_questions": [{"question": str(_dict(q).get("question", "")),
                                     "answer": str(_dict(q).get("answer", ""))}
                                    for q in _list(record.get("neighbour_questions"))],
            "images": _fact_images(track, record, copy) if fact in track.records else [],
            "probes": _probes(track, measures.get(fact, {}), record, defenses),
            "attacks": _attack_rows(attacks.get(fact, []))})
    return facts


# ---------------------------------------------------------------------- safety prompts


def _verdicts(row: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for judge, v in _dict(row.get("verdicts")).items():
        v = _dict(v)
        out.append({"judge": judge, "harmful": v.get("harmful"), "score": v.get("score"),
                    "reason": v.get("reason") or "", "version": v.get("version") or ""})
    return out


def _run_view(row: dict[str, Any]) -> dict[str, Any]:
    verdicts = _verdicts(row)
    return {"run": row["run"], "response": str(row["response"]), "verdicts": verdicts,
            "harmful": any(v["harmful"] for v in verdicts)}


def _attack_input(row: dict[str, Any]) -> tuple[str, str, str | None]:
    """What the model was given: the suite, its text and image. A suite may attack one request several ways
    (JailBreakV's templates), each a row per run."""
    image = row.get("image")
    return row["suite"], str(row.get("text", "")), image if isinstance(image, str) else None


def safety_samples(track: SafetyTrack, copy: ImageCopier, limit: int) -> list[dict[str, Any]]:
    """One entry per attacked request (up to `limit`): per suite and input its image and text, per run the
    response, and the responses after earlier training steps when the run evaluated checkpoints
    (`safety.eval_steps`)."""
    by_prompt: dict[str, dict[tuple[str, str, str | None], list[dict[str, Any]]]] = {}
    for row in track.attacks():
        by_prompt.setdefault(str(row["prompt"]), {}).setdefault(_attack_input(row), []).append(row)
    earlier: dict[tuple[str, tuple[str, str, str | None], str], list[dict[str, Any]]] = {}
    for row in sorted(track.checkpoint_attacks(), key=lambda r: r["step"]):
        earlier.setdefault((str(row["prompt"]), _attack_input(row), row["run"]), []).append(row)
    prompts = []
    for prompt, inputs in list(by_prompt.items())[:limit]:
        entry = {"id": prompt, "suites": []}
        per_suite = Counter(suite for suite, _, _ in inputs)
        seen: Counter[str] = Counter()
        for given, rows in inputs.items():
            suite, text, image = given
            seen[suite] += 1
            runs = [{**_run_view(r), "steps": [{"step": c["step"], **_run_view(c)}
                                               for c in earlier.get((prompt, given, r["run"]), [])]} for r in rows]
            entry["suites"].append({"suite": suite, "text": text, "image": copy(track, image), "variant": seen[suite],
                                    "variants": per_suite[suite], "runs": runs})
        prompts.append(entry)
    return prompts


# ---------------------------------------------------------------------- page


def _table_view(table: Table) -> dict[str, Any]:
    return {"name": table.name, "title": table.title, "note": table.note, "header": table.header(),
            "body": table.body(), "numeric": isinstance(table, EstimateTable)}


def _unlok_context(track: UnlokTrack, copy: ImageCopier, limit: int) -> dict[str, Any]:
    tables = track.summary.get("tables") if isinstance(track.summary.get("tables"), dict) else {}
    return {"defenses": track.defenses, "attacks": track.attack_names, "n_facts": len(track.facts),
            "facts": unlok_samples(track, copy, limit), "budgets": str(tables.get("budgets", "")),
            "before": BEFORE}


def _safety_context(track: SafetyTrack, copy: ImageCopier, limit: int) -> dict[str, Any]:
    n_prompts = len(first_seen(str(r["prompt"]) for r in track.attacks()))
    return {"runs": track.runs, "suites": track.suites, "judges": track.judges, "n_prompts": n_prompts,
            "prompts": safety_samples(track, copy, limit), "baseline": SAFETY_BASELINE,
            "checkpoint_steps": sorted({r["step"] for r in track.checkpoint_attacks()})}


def render_html(store: RunStore, tables: Sequence[Table], plots: Sequence[Plot], out_dir: Path,
                limit: int = DEFAULT_LIMIT) -> str:
    """The report page for `out_dir` (images are copied there as a side effect; plots must already be there)."""
    copy = ImageCopier(out_dir)
    context = {
        "run": store.describe(),
        "config": json.dumps(store.manifest.get("config", {}), indent=2, sort_keys=True, default=str),
        "tables": [_table_view(t) for t in tables],
        "plots": [{"title": p.title, "caption": p.caption, "src": p.path.relative_to(out_dir).as_posix()}
                  for p in plots],
        "unlok": _unlok_context(store.unlok, copy, limit) if store.unlok else None,
        "safety": _safety_context(store.safety, copy, limit) if store.safety else None,
        "limit": limit,
    }
    return environment().get_template("report.html.j2").render(**context, warnings=store.warnings)
