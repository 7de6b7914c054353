"""Paraphrase similarity filter: drop question paraphrases a sentence embedder finds too far from their question.

A model paraphraser sometimes answers the question, asks about another attribute, or drifts off; each of
those asks a different fact, and a paraphrase score measured on it would not be about the deleted fact.
What a sentence embedding cannot see: swapped roles ("what hunts this creature?" vs "what does this creature
hunt?") score as high as true paraphrases, so the manual review sheet still has the last word.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mmunlearn.data.proximity_pipeline import l2_normalise
from mmunlearn.data.records import Benchmark
from mmunlearn.data.text_embedders import TextEmbedder, get_text_embedder
from mmunlearn.errors import ConfigError, DataError

# Chosen on the embedded world with MiniLM (all-MiniLM-L6-v2). A question against its hand-written template
# paraphrases (56 pairs) scores 0.70-0.98; against the same creature's questions about another attribute
# (192 pairs: "what does this creature eat?" vs "where does this creature live?", same frame, other fact)
# 0.40-0.71. At 0.72 no wrong-fact question passes and 95% (53/56) of the true paraphrases do; at 0.70, 4% of
# the wrong-fact ones would pass. SmolLM2's drifting samples ("which creature lives in the city of London?",
# 0.62) fall below it. `benchmarks/smol_paraphrases.py` prints both reference distributions for a benchmark.
DEFAULT_MIN_SIMILARITY = 0.72
META_KEY = "paraphrase_similarity"


@dataclass(frozen=True)
class ScoredParaphrases:
    """One question's paraphrases with their cosine similarity to it, split at the threshold."""

    question: str
    kept: tuple[tuple[str, float], ...]
    dropped: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict[str, Any]:
        def rows(pairs: tuple[tuple[str, float], ...]) -> list[dict[str, Any]]:
            return [{"text": t, "similarity": round(s, 4)} for t, s in pairs]
        return {"question": self.question, "kept": rows(self.kept), "dropped": rows(self.dropped)}


@dataclass
class SimilarityReport:
    """What the filter kept, out of how many paraphrases, per question (in input order)."""

    min_similarity: float
    entries: list[ScoredParaphrases]
    name: str = "paraphrase-similarity"

    @property
    def n_kept(self) -> int:
        return sum(len(e.kept) for e in self.entries)

    @property
    def n_total(self) -> int:
        return sum(len(e.kept) + len(e.dropped) for e in self.entries)

    @property
    def kept_share(self) -> float | None:
        """Kept / judged paraphrases; None when there was nothing to judge."""
        return self.n_kept / self.n_total if self.n_total else None

    def similarities(self) -> list[float]:
        return [s for e in self.entries for _, s in (*e.kept, *e.dropped)]

    def summary(self) -> str:
        share = "" if self.kept_share is None else f" ({self.kept_share:.1%})"
        return f"{self.name} >= {self.min_similarity:g}: kept {self.n_kept}/{self.n_total} paraphrases{share}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "min_similarity": self.min_similarity, "kept": self.n_kept,
                "total": self.n_total, "kept_share": self.kept_share, "entries": [e.to_dict() for e in self.entries]}


def similarity_filter(questions: Sequence[str], paraphrases: Sequence[Sequence[str]], embedder: str | TextEmbedder,
                      min_similarity: float = DEFAULT_MIN_SIMILARITY) -> tuple[list[list[str]], SimilarityReport]:
    """Per question, the paraphrases whose cosine similarity to it is >= `min_similarity`, and the report."""
    if len(questions) != len(paraphrases):
        raise DataError(f"paraphrase filter: {len(questions)} questions but {len(paraphrases)} paraphrase lists")
    if not -1.0 <= min_similarity <= 1.0:
        raise ConfigError(f"min_similarity={min_similarity}: a cosine similarity lies in [-1, 1]")
    embed = get_text_embedder(embedder) if isinstance(embedder, str) else embedder
    texts = list(dict.fromkeys([*questions, *(p for group in paraphrases for p in group)]))
    vectors = np.asarray(embed(texts), dtype=np.float64) if texts else np.zeros((0, 1))
    if vectors.ndim != 2 or len(vectors) != len(texts) or not np.all(np.isfinite(vectors)):
        raise DataError(f"paraphrase filter: the text embedder returned shape {vectors.shape} (finite: "
                        f"{bool(np.all(np.isfinite(vectors)))}) for {len(texts)} texts")
    row = dict(zip(texts, l2_normalise(vectors)))
    kept_lists, entries = [], []
    for question, group in zip(questions, paraphrases):
        scored = [(p, float(row[p] @ row[question])) for p in group]
        kept = tuple((p, s) for p, s in scored if s >= min_similarity)
        entries.append(ScoredParaphrases(question, kept, tuple((p, s) for p, s in scored if s < min_similarity)))
        kept_lists.append([p for p, _ in kept])
    return kept_lists, SimilarityReport(min_similarity, entries)


def filter_paraphrases(benchmark: Benchmark, embedder: str | TextEmbedder,
                       min_similarity: float = DEFAULT_MIN_SIMILARITY) -> tuple[Benchmark, SimilarityReport]:
    """Every record keeps only its close paraphrases; `meta["paraphrase_similarity"]` lists kept and dropped ones."""
    records = benchmark.records
    kept, report = similarity_filter([r.question for r in records], [r.question_paraphrases for r in records],
                                     embedder, min_similarity)
    out = []
    for record, texts, entry in zip(records, kept, report.entries):
        judged = entry.to_dict()
        del judged["question"]
        out.append(replace(record, question_paraphrases=tuple(texts),
                           meta={**record.meta, META_KEY: {"min_similarity": min_similarity, **judged}}))
    return replace(benchmark, records=out), report
