"""`compare_runs`: differences B - A recomputed from samples, paired by item when the items match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import synthetic_run

from mmunlearn.errors import DataError
from mmunlearn.metrics.bootstrap import paired_difference_ci
from mmunlearn.report.compare import N_RESAMPLES, compare_runs, unpaired_difference_ci

synthetic = synthetic_run
HEAD = ["A", "B", "B - A [95% CI]", "CI excludes 0", "pairing", "n A / B"]


def _row(markdown: str, *key: str) -> dict[str, str]:
    """The cells after `key` of the table row that starts with `key`, by column name."""
    prefix = "| " + " | ".join(key) + " |"
    lines = [line for line in markdown.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"{prefix!r} matches {len(lines)} lines"
    cells = [c.strip() for c in lines[0][len(prefix):].strip(" |").split(" | ")]
    return dict(zip(HEAD, cells))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    return {
        "a": synthetic.make_run(root / "a"),
        # same facts and requests; fact_erasure/hp now recovers every fact, one figstep cell more harmful
        "b": synthetic.make_run(root / "b", success={("fact_erasure", "hp"): (1, 1, 1)},
                                harmful={("unlearn_mm", "figstep", "keyword"): (1, 1, 1)}),
        # a different fact set (f4 instead of f3) and another learning rate
        "c": synthetic.make_run(root / "c", facts=("f1", "f2", "f4"), success={("fact_erasure", "hp"): (1, 1, 0)},
                                config={"model": {"name": "tiny"}, "unlok": {"lr": 0.02}, "seed": 0}),
        "d": synthetic.make_run(root / "d", safety=False),
    }


def test_paired_differences_by_fact(runs: dict[str, Path]) -> None:
    md = compare_runs(runs["a"], runs["b"])
    row = _row(md, "fact_erasure", "hp")
    # A: f1..f3 = 1, 0, 0 (mean 1/3); B: 1, 1, 1 (mean 1); per-fact differences 0, 1, 1 -> mean 2/3
    expected = paired_difference_ci([1, 1, 1], [1, 0, 0], n_resamples=N_RESAMPLES)
    assert expected.mean == pytest.approx(2 / 3)
    assert row == {"A": "0.33 [0.00, 1.00]", "B": "1.00 [1.00, 1.00]", "B - A [95% CI]": expected.format(),
                   "CI excludes 0": "no", "pairing": "paired", "n A / B": "3 / 3"}
    assert _row(md, "none", "hp")["B - A [95% CI]"] == "0.00 [0.00, 0.00]"
    assert md.index("| none | hp |") < md.index("| fact_erasure | hp |")  # before-editing rows first


def test_paired_safety_and_utility_cells(runs: dict[str, Path]) -> None:
    md = compare_runs(runs["a"], runs["b"])
    row = _row(md, "unlearn_mm", "figstep", "keyword")
    expected = paired_difference_ci([1, 1, 1], [0, 0, 1], n_resamples=N_RESAMPLES)
    assert expected.mean == pytest.approx(2 / 3)
    assert row["B - A [95% CI]"] == expected.format() and row["pairing"] == "paired"
    assert _row(md, "base", "text_only", "oracle")["B - A [95% CI]"] == "0.00 [0.00, 0.00]"
    assert _row(md, "unlearn_mm", "over_refusal")["B - A [95% CI]"] == "0.00 [0.00, 0.00]"
    assert "The resolved configs are identical." in md


def test_unpaired_when_facts_differ(runs: dict[str, Path]) -> None:
    md = compare_runs(runs["a"], runs["c"])
    row = _row(md, "fact_erasure", "hp")
    # A: 1, 0, 0 over f1-f3; C: 1, 1, 0 over f1, f2, f4 -> 2/3 - 1/3 = 1/3, resampled independently
    expected = unpaired_difference_ci([1, 0, 0], [1, 1, 0])
    assert expected.mean == pytest.approx(1 / 3)
    assert row["B - A [95% CI]"] == expected.format() and row["pairing"] == "unpaired"
    assert _row(md, "base", "figstep", "keyword")["pairing"] == "paired"  # same requests in both runs
    assert "| unlok.lr | 0.01 | 0.02 |" in md


def test_cells_only_in_one_run_are_listed(runs: dict[str, Path]) -> None:
    md = compare_runs(runs["a"], runs["d"])
    assert "## Safety: attack success rate" in md
    assert "Only in run A: base/text_only/keyword" in md
    assert "No cell is in both runs." in md
    assert "Only in run" not in compare_runs(runs["a"], runs["a"])


def test_unpaired_difference_ci_properties() -> None:
    constant = unpaired_difference_ci([0.5, 0.5], [1.0, 1.0, 1.0])
    assert (constant.mean, constant.low, constant.high, constant.n) == (0.5, 0.5, 0.5, 2)
    spread = unpaired_difference_ci([0, 1, 0, 1], [1, 1, 0, 1], seed=3)
    assert spread == unpaired_difference_ci([0, 1, 0, 1], [1, 1, 0, 1], seed=3)
    assert spread.mean == pytest.approx(0.25) and spread.low < spread.mean < spread.high
    assert unpaired_difference_ci([], [1.0]).n == 0


def test_compare_missing_run_is_a_data_error(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run directory not found"):
        compare_runs(runs["a"], tmp_path / "missing")
    (tmp_path / "broken").mkdir()
    with pytest.raises(DataError, match="manifest.json"):
        compare_runs(tmp_path / "broken", runs["a"])


def test_checkpoint_cells_compared_when_a_run_has_them(tmp_path: Path, runs: dict[str, Path]) -> None:
    """Runs with `safety.eval_steps` are compared at each evaluated step too; a run without checkpoints adds no
    such section."""
    a = synthetic.add_checkpoints(synthetic.make_run(tmp_path / "a"))
    b = synthetic.add_checkpoints(synthetic.make_run(tmp_path / "b"))
    # B's unlearned run, at step 10, no longer answers p1 harmfully on figstep by the keyword judge
    path = b / "safety" / "checkpoints.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        if r["type"] == "attack" and (r["suite"], r["prompt"]) == ("figstep", "p1"):
            r["asr/keyword"] = 0.0
            r["verdicts"]["keyword"]["harmful"] = False
    path.write_text("\n".join(json.dumps(r) for r in rows))
    md = compare_runs(a, b)
    assert "## Safety over training: attack success rate" in md and "## Safety over training: utility" in md
    row = _row(md, "unlearn_mm", "10", "figstep", "keyword")  # A: base's 1, 1, 1; B: 0, 1, 1
    assert row["A"] == "1.00 [1.00, 1.00]" and row["pairing"] == "paired" and row["n A / B"] == "3 / 3"
    assert row["B - A [95% CI]"] == paired_difference_ci([0, 1, 1], [1, 1, 1], n_resamples=N_RESAMPLES).format()
    assert _row(md, "unlearn_mm", "10", "image_facts")["A"] == "0.00 [0.00, 0.00]"
    assert "over training" not in compare_runs(runs["a"], runs["b"])
    only_a = compare_runs(a, runs["b"])
    assert "Only in run A: unlearn_mm/10/text_only/keyword" in only_a
