"""Report tables and plots from a synthetic run directory in the runner's exact on-disk format.

`make_run` (tests/report/synthetic_run.py, shared with the HTML and compare tests) writes a small run: 3 facts, defenses
`fact_erasure` and `head_projection` plus `none`, attacks `hp` (with ranks at every hidden state), `pd` and
`multimodal`; a safety track of 2 runs x 2 suites x 2 judges over 3 requests. Success values are fixed
tables, so tests can compute expected numbers by hand.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_run import DEFENSES, RANK_BASE, add_checkpoints, make_run

from mmunlearn.errors import DataError
from mmunlearn.metrics.bootstrap import Estimate
from mmunlearn.report.plots import all_plots, lens_ranks
from mmunlearn.report.run_store import RunStore
from mmunlearn.report.tables import EstimateTable, PlainTable, all_tables, latex_escape


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


# ---------------------------------------------------------------------- table formats


def _hand_table() -> EstimateTable:
    est = {("none", "hp"): Estimate(1.0, 1.0, 1.0, 3), ("none", "pd_2"): Estimate(0.5, 0.25, 0.75, 2),
           ("fact_erasure", "hp"): Estimate(0.0, 0.0, 0.0, 3)}
    return EstimateTable("t", "Attack success", "n = 2-3", est, ["none", "fact_erasure"], ["hp", "pd_2"],
                         corner="defense \\ attack")


def test_estimate_table_markdown_is_exact() -> None:
    assert _hand_table().markdown() == (
        "| defense \\ attack | hp | pd_2 |\n"
        "|---|---|---|\n"
        "| none | 1.00 [1.00, 1.00] | 0.50 [0.25, 0.75] |\n"
        "| fact_erasure | 0.00 [0.00, 0.00] | - |\n")


def test_estimate_table_csv_has_mean_low_high_per_column() -> None:
    lines = _hand_table().csv().splitlines()
    assert lines[0] == "defense \\ attack,hp mean,hp low,hp high,pd_2 mean,pd_2 low,pd_2 high"
    assert lines[1] == "none,1.0000,1.0000,1.0000,0.5000,0.2500,0.7500"
    assert lines[2] == "fact_erasure,0.0000,0.0000,0.0000,,,"


def test_latex_is_booktabs_with_escapes() -> None:
    tex = _hand_table().latex()
    assert tex == (
        "% Attack success (n = 2-3)\n"
        "\\begin{tabular}{lrr}\n"
        "\\toprule\n"
        "defense \\textbackslash{} attack & hp & pd\\_2 \\\\\n"
        "\\midrule\n"
        "none & 1.00 [1.00, 1.00] & 0.50 [0.25, 0.75] \\\\\n"
        "fact\\_erasure & 0.00 [0.00, 0.00] & -- \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n")


def test_latex_escape_specials() -> None:
    assert latex_escape("50% & a_b #1 $x {y} ~ ^") == (
        r"50\% \& a\_b \#1 \$x \{y\} \textasciitilde{} \textasciicircum{}")
    assert latex_escape("[0.1, 0.2]") == "{}[0.1, 0.2]"


def test_plain_table_formats() -> None:
    table = PlainTable("c", "Compute", columns=["run", "FLOPs"], cells=[["a|b", "1e+12"], ["x_y", "-"]])
    assert table.markdown() == "| run | FLOPs |\n|---|---|\n| a\\|b | 1e+12 |\n| x_y | - |\n"
    assert table.csv() == "run,FLOPs\na|b,1e+12\nx_y,-\n"
    assert "x\\_y & -- \\\\" in table.latex()


# ---------------------------------------------------------------------- tables of a run


def _latex_well_formed(tex: str) -> None:
    body = [line for line in tex.splitlines() if not line.startswith(("%", "\\"))]
    columns = tex.split("\\begin{tabular}{", 1)[1].split("}", 1)[0]
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") == 1
    assert tex.index("\\toprule") < tex.index("\\midrule") < tex.index("\\bottomrule")
    for line in body:
        assert line.endswith(" \\\\"), line
        bare = line.replace("\\&", "").replace("\\_", "").replace("\\%", "")
        assert bare.count("&") == len(columns) - 1, line
        assert "_" not in bare and "%" not in bare, line


def test_run_tables_in_three_formats(run_dir: Path) -> None:
    tables = {t.name: t for t in all_tables(RunStore(run_dir))}
    assert list(tables) == ["unlok_attack_success", "unlok_effects", "unlok_questions", "safety_asr_keyword",
                            "safety_asr_oracle", "safety_asr_changes", "safety_utility", "safety_compute"]
    attack = tables["unlok_attack_success"]
    md = attack.markdown().splitlines()
    assert md[0] == "| defense \\ attack | hp | pd | multimodal |"
    assert md[2] == "| none | 1.00 [1.00, 1.00] | 0.67 [0.00, 1.00] | 1.00 [1.00, 1.00] |"
    assert md[4].startswith("| head_projection | 0.00 [0.00, 0.00] | 0.33 [")
    assert "n = 3 per cell" in attack.note
    for table in tables.values():
        formats = table.formats()
        assert set(formats) == {"md", "csv", "tex"}
        _latex_well_formed(formats["tex"])
    assert "fact\\_erasure & 0.33" in attack.latex()
    asr = tables["safety_asr_keyword"].markdown().splitlines()
    assert asr[0] == "| run \\ suite | text_only | figstep |"
    assert asr[2].startswith("| base | 0.67 [") and "| 1.00 [1.00, 1.00] |" in asr[2]
    compute = tables["safety_compute"].markdown().splitlines()
    assert compute[0] == "| run | loss | forget data | steps | text tokens | image tokens | FLOPs |"
    assert compute[2] == "| unlearn_mm | npo | multimodal | 30 | 1200 | 4800 | 1.5e+12 |"


def test_one_track_only(tmp_path: Path) -> None:
    store = RunStore(make_run(tmp_path / "run", safety=False))
    assert store.safety is None
    assert all(t.name.startswith("unlok_") for t in all_tables(store))
    plots = all_plots(store, tmp_path / "plots")
    assert [p.name for p in plots] == ["unlok_attack_success", "unlok_logit_lens", "unlok_tradeoff"]
    only_safety = RunStore(make_run(tmp_path / "run2", unlok=False))
    assert [p.name for p in all_plots(only_safety, tmp_path / "plots2")] == ["safety_asr"]


# ---------------------------------------------------------------------- plots


@pytest.mark.filterwarnings("error::UserWarning")  # e.g. a collapsed layout is a broken figure
def test_plots_are_valid_pngs(run_dir: Path, tmp_path: Path) -> None:
    plots = all_plots(RunStore(run_dir), tmp_path / "plots")
    assert [p.name for p in plots] == ["unlok_attack_success", "unlok_logit_lens", "unlok_tradeoff", "safety_asr"]
    for plot in plots:
        assert plot.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(plot.path) as image:
            image.verify()
        with Image.open(plot.path) as image:
            assert image.size[0] > 300 and image.size[1] > 200
            assert len(set(image.convert("L").getdata())) > 10  # something was drawn


def test_logit_lens_ranks_per_hidden_state(run_dir: Path) -> None:
    ranks = lens_ranks(RunStore(run_dir).unlok)
    assert set(ranks) == set(DEFENSES)
    for defense, base in RANK_BASE.items():
        assert ranks[defense].shape == (3, 5)
        np.testing.assert_array_equal(np.median(ranks[defense], axis=0), np.array(base) + 1)


# ---------------------------------------------------------------------- bad input


def _corrupt_line(path: Path, number: int) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = lines[number - 1][:20]
    path.write_text("\n".join(lines) + "\n")


BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "manifest missing": (lambda r: (r / "manifest.json").unlink(), "manifest.json: file not found"),
    "summary corrupt": (lambda r: (r / "unlok" / "summary.json").write_text("{not json"), "unlok/summary.json"),
    "samples line": (lambda r: _corrupt_line(r / "safety" / "samples.jsonl", 2), "safety/samples.jsonl:2"),
    "samples missing": (lambda r: (r / "unlok" / "samples.jsonl").unlink(), "unlok/samples.jsonl: file not found"),
    "row field": (lambda r: (r / "unlok" / "samples.jsonl").write_text('{"type": "attack", "fact": "f1"}\n'),
                  "missing field 'defense'"),
    "images.json": (lambda r: (r / "unlok" / "images.json").write_text("[1, 2]"), "unlok/images.json"),
    "unfinished": (lambda r: ((r / "safety" / "summary.json").unlink(), (r / "safety" / "units").mkdir(),
                              (r / "safety" / "units" / "00000-base.json").write_text("{}")),
                   "safety: track not finished (1 units written, no summary.json)"),
    "no tracks": (lambda r: [shutil.rmtree(r / t) for t in ("unlok", "safety")], "neither an unlok/"),
    "bad estimate": (lambda r: (r / "unlok" / "summary.json").write_text(
        json.dumps({"attack_success": [{"defense": "none", "attack": "hp", "mean": "x"}], "effects": []})),
        "attack_success"),
    "summary field missing": (lambda r: (r / "safety" / "summary.json").write_text(json.dumps({"asr": {}})),
                              "safety/summary.json: field 'utility' missing"),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_missing_or_corrupt_files_give_one_line_data_error(run_dir: Path, case: str) -> None:
    breaker, expected = BREAKAGES[case]
    breaker(run_dir)
    with pytest.raises(DataError) as info:
        all_tables(RunStore(run_dir))
    message = str(info.value)
    assert "\n" not in message
    assert expected in message


def test_missing_run_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run directory not found"):
        RunStore(tmp_path / "nope")


# ---------------------------------------------------------------------- over training (safety.eval_steps)


def test_checkpoint_tables_and_plot(run_dir: Path, tmp_path: Path) -> None:
    store = RunStore(add_checkpoints(run_dir))
    tables = {t.name: t for t in all_tables(store)}
    assert [n for n in tables if "checkpoints" in n] == [f"safety_checkpoints_{t}" for t in (
        "asr_keyword", "asr_oracle", "utility", "compute")]
    assert tables["safety_checkpoints_compute"].body() == [["unlearn_mm @ 10", "600", "2400", "7.5e+11"],
                                                           ["unlearn_mm @ 20", "1200", "4800", "1.5e+12"]]
    asr = tables["safety_checkpoints_asr_keyword"].markdown().splitlines()
    assert asr[0] == "| run @ step \\ suite | text_only | figstep |"
    assert [line.split(" | ")[0] for line in asr[2:]] == ["| base @ 0", "| unlearn_mm @ 10", "| unlearn_mm @ 20"]
    # keyword verdicts (HARMFUL): base 2/3 and 3/3; the run at step 10 = base; at step 20 its own 1/3 and 1/3
    assert asr[3] == asr[2].replace("base @ 0", "unlearn_mm @ 10")
    assert asr[4].startswith("| unlearn_mm @ 20 | 0.33 [") and asr[2].startswith("| base @ 0 | 0.67 [")
    utility = tables["safety_checkpoints_utility"].markdown().splitlines()
    assert utility[3].startswith("| unlearn_mm @ 10 | 0.00 [0.00, 0.00] | 0.00 [0.00, 0.00] |")
    assert utility[4].startswith("| unlearn_mm @ 20 | 0.50 [")
    plots = {p.name: p for p in all_plots(store, tmp_path / "plots")}
    with Image.open(plots["safety_checkpoints"].path) as image:
        assert image.size[0] > 300 and len(set(image.convert("L").getdata())) > 10


def test_a_run_without_checkpoints_has_no_such_table_or_plot(run_dir: Path, tmp_path: Path) -> None:
    store = RunStore(run_dir)
    assert store.safety is not None and store.safety.checkpoints() == ({}, {})
    assert "safety_checkpoints" not in [p.name for p in all_plots(store, tmp_path / "plots")]


@pytest.mark.parametrize("part, field", [("utility", "step"), ("compute", "flops")])
def test_malformed_checkpoints_are_a_one_line_data_error(run_dir: Path, part: str, field: str) -> None:
    path = add_checkpoints(run_dir) / "safety" / "summary.json"
    summary = json.loads(path.read_text())
    summary["checkpoints"][part][0][field] = "ten"
    path.write_text(json.dumps(summary))
    with pytest.raises(DataError, match=rf"field 'checkpoints'\['{part}'\]\[0\]: expected an object with run, "):
        all_tables(RunStore(run_dir))


def test_early_stop_table(run_dir: Path) -> None:
    path = run_dir / "safety" / "summary.json"
    summary = json.loads(path.read_text())
    summary["early_stop"] = {"rule": {"every": 5, "max_asr": 0.0, "judge": "oracle", "n_val": 40, "suites": None,
                                      "validation_requests": 40},
                             "runs": {"unlearn_mm": {"checks": [{"step": 5, "asr": 0.25}, {"step": 10, "asr": 0.0}],
                                                     "stopped_at": 10}}}
    path.write_text(json.dumps(summary))
    table = {t.name: t for t in all_tables(RunStore(run_dir))}["safety_early_stop"]
    assert table.body() == [["unlearn_mm", "5: 0.25, 10: 0.00", "10"]]
    assert "every 5 steps, judge oracle, every suite, 40 requests" in table.note
    summary["early_stop"]["runs"]["unlearn_mm"]["checks"] = None
    path.write_text(json.dumps(summary))
    with pytest.raises(DataError, match="field 'early_stop': expected an object with 'rule' and 'runs'"):
        all_tables(RunStore(run_dir))


def test_compute_rows_follow_the_runs_order_not_the_summary_keys(run_dir: Path) -> None:
    path = run_dir / "safety" / "summary.json"
    summary = json.loads(path.read_text())
    summary["compute"] = {"aaa_extra": {**summary["compute"]["unlearn_mm"], "loss": "sft"},
                          **summary["compute"]}  # keys as sort_keys writes them: not the runs' order
    path.write_text(json.dumps(summary, sort_keys=True))
    table = {t.name: t for t in all_tables(RunStore(run_dir))}["safety_compute"]
    assert [row[0] for row in table.body()] == ["unlearn_mm", "aaa_extra"]
