"""`mmunlearn safety run` on the micro world: every run x suite x judge is there, compute is recorded, the
model is restored, and bad names fail in one line before any work."""

from __future__ import annotations

import json

import pytest
import torch

from mmunlearn.cli import main
from mmunlearn.errors import DataError
from mmunlearn.experiments.safety_summary import compute_ratios

FAST = ["safety.n_eval=3", "safety.n_utility=4", "safety.train.steps=2", "safety.train.batch_size=4",
        "safety.suite_params.pgd_image.steps=1", "threads=1"]


def test_safety_run_writes_every_run_suite_and_judge(tmp_path, micro_overrides, capsys):
    out = tmp_path / "run"
    code = main(["safety", "run", "--out", str(out), *micro_overrides, *FAST, f"paths.cache_dir={tmp_path}/c"])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    summary = json.loads((out / "summary.json").read_text())
    runs = ["base", "text_sft", "mm_sft", "textual_unlearning", "multimodal_unlearning"]
    suites = ["text", "text_jailbreak", "figstep", "query_relevant", "typo_composite", "jailbreakv", "pgd_image"]
    for judge in ("oracle", "refusal_keyword"):
        assert {(e["run"], e["suite"]) for e in summary["asr"][judge]} == {(r, s) for r in runs for s in suites}
    assert set(summary["compute"]) == set(runs) - {"base"}
    assert summary["compute"]["multimodal_unlearning"]["image_tokens"] > 0
    assert summary["compute"]["textual_unlearning"]["image_tokens"] == 0
    assert {r["loss"] for r in summary["compute_ratios"]} == {"sft", "yao"}
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    verdict = next(r for r in rows if r["type"] == "attack")["verdicts"]["oracle"]
    assert verdict["judge"] == "oracle" and verdict["version"]
    assert (out / "report.md").read_text().startswith("# Safety")


def test_compute_ratio_by_hand():
    compute = {"t": {"loss": "yao", "data": "text", "flops": 10.0, "text_tokens": 100, "image_tokens": 0},
               "m": {"loss": "yao", "data": "multimodal", "flops": 60.0, "text_tokens": 100, "image_tokens": 500}}
    assert "seconds" not in compute_ratios(compute)[0]
    [ratio] = compute_ratios(compute, {"t": {"train_seconds": 2.0}, "m": {"train_seconds": 5.0}})
    assert ratio["flops"] == 6.0 and ratio["seconds"] == 2.5 and ratio["tokens"] == 6.0


@pytest.mark.parametrize("override, message", [
    ("safety.runs=[base,txt_sft]", "'txt_sft' has no entry"),
    ("safety.suites=[figstpe]", "did you mean 'figstep'"),
    ("safety.judges=[orcale]", "did you mean 'oracle'"),
    ("safety.run_defs.text_sft.loss=yoa", "did you mean 'yao'"),
])
def test_bad_names_are_one_line_errors_before_any_work(tmp_path, override, message, capsys):
    code = main(["safety", "run", "--out", str(tmp_path / "never"), override, "paths.cache_dir=/nonexistent"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "never").exists()


def test_saved_runs_are_checkpoints_of_the_trained_model(tmp_path, micro_overrides, capsys):
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "run"
    code = main(["safety", "run", "--out", str(out), *micro_overrides, *FAST, f"paths.cache_dir={tmp_path}/c",
                 "safety.runs=[base,textual_unlearning]", "safety.suites=[text]",
                 "safety.save_runs=[textual_unlearning]"])
    assert code == 0, capsys.readouterr().err
    assert [p.name for p in (out / "models").iterdir()] == ["textual_unlearning"]
    saved = AutoModelForImageTextToText.from_pretrained(out / "models" / "textual_unlearning")
    base = AutoModelForImageTextToText.from_pretrained(json.loads((out / "summary.json").read_text())["model"])
    changed = {n for n, p in saved.state_dict().items() if not torch.equal(p, base.state_dict()[n])}
    assert changed and all(".language_model.layers." in n for n in changed)  # LoRA on the language model only
    assert all(n.endswith("proj.weight") for n in changed)


@pytest.mark.parametrize("runs, message", [
    ("[base,text_sft]", "'base' is not a trained run of safety.runs (trained: text_sft)"),
    ("[text_sft]", "'mm_sft' is not a trained run of safety.runs (trained: text_sft)"),
])
def test_save_runs_names_trained_runs(tmp_path, runs, message, capsys):
    save = "[base]" if "base" in runs else "[mm_sft]"
    code = main(["safety", "run", "--out", str(tmp_path / "never"), f"safety.runs={runs}", f"safety.save_runs={save}",
                 "paths.cache_dir=/nonexistent"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_eval_steps_add_checkpoints_and_leave_the_final_evaluation_as_it_was(tmp_path, micro_overrides, capsys):
    common = [*micro_overrides, *FAST, f"paths.cache_dir={tmp_path}/c", "safety.train.steps=3",
              "safety.runs=[base,textual_unlearning]", "safety.suites=[text,figstep,pgd_image]"]
    assert main(["safety", "run", "--out", str(tmp_path / "plain"), *common]) == 0, capsys.readouterr().err
    assert main(["safety", "run", "--out", str(tmp_path / "ck"), *common, "safety.eval_steps=[1,2]"]) == 0, \
        capsys.readouterr().err
    plain, ck = tmp_path / "plain", tmp_path / "ck"
    assert (ck / "samples.jsonl").read_bytes() == (plain / "samples.jsonl").read_bytes()  # training unchanged
    summary, before = (json.loads((d / "summary.json").read_text()) for d in (ck, plain))
    checkpoints = summary.pop("checkpoints")
    assert summary == before and not (plain / "checkpoints.jsonl").exists()
    rows = [json.loads(line) for line in (ck / "checkpoints.jsonl").read_text().splitlines()]
    assert {(r["run"], r["step"]) for r in rows} == {("textual_unlearning", 1), ("textual_unlearning", 2)}
    assert {r["suite"] for r in rows if r["type"] == "attack"} == {"text", "figstep", "pgd_image"}
    assert checkpoints["steps"] == [0, 1, 2, 3]
    for judge, entries in checkpoints["asr"].items():  # step 0 is the base model, the last step the main table
        by_step = {(e["run"], e["step"], e["suite"]): e["mean"] for e in entries}
        final = {(e["run"], e["suite"]): e["mean"] for e in before["asr"][judge]}
        assert {(r, s): m for (r, t, s), m in by_step.items() if t in (0, 3)} == final
        assert {(r, t) for r, t, _ in by_step} == {("base", 0), *(("textual_unlearning", t) for t in (1, 2, 3))}
    spent = [(c["run"], c["step"], c["flops"]) for c in checkpoints["compute"]]
    assert [(r, t) for r, t, _ in spent] == [("textual_unlearning", t) for t in (1, 2, 3)]
    assert 0 < spent[0][2] < spent[1][2] < spent[2][2] == summary["compute"]["textual_unlearning"]["flops"]
    report = (ck / "report.md").read_text()
    assert "## Over training" in report and "| textual_unlearning @ 2 |" in report.split("so far")[1]


@pytest.mark.parametrize("steps", ["[0]", "[30]", "[5,3]", "[5,5]"])
def test_eval_steps_outside_the_training_are_one_line_errors(tmp_path, steps, capsys):
    code = main(["safety", "run", "--out", str(tmp_path / "never"), f"safety.eval_steps={steps}",
                 "paths.cache_dir=/nonexistent"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "config safety.eval_steps: expected increasing step counts from 1 to safety.train.steps - 1 = 29" in err[0]


def test_early_stop_trains_to_the_first_passing_check_and_reports_that_step(tmp_path, micro_overrides, capsys):
    """max_asr=1 passes at the first check: the run stops after step 1 of 3, and its tables are those of a run
    trained for 1 step (the validation requests change neither the attacked ones nor the training)."""
    common = [*micro_overrides, *FAST, f"paths.cache_dir={tmp_path}/c", "safety.runs=[base,textual_unlearning]",
              "safety.suites=[text,figstep]"]
    stop = "safety.early_stop={every:1,max_asr:1.0,n_val:2,suites:[figstep]}"
    assert main(["safety", "run", "--out", str(tmp_path / "stop"), *common, "safety.train.steps=3", stop]) == 0, \
        capsys.readouterr().err
    assert main(["safety", "run", "--out", str(tmp_path / "one"), *common, "safety.train.steps=1"]) == 0, \
        capsys.readouterr().err
    stopped, one = tmp_path / "stop", tmp_path / "one"
    assert (stopped / "samples.jsonl").read_bytes() == (one / "samples.jsonl").read_bytes()
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["compute"]["textual_unlearning"]["steps"] == 1
    run = summary["early_stop"]["runs"]["textual_unlearning"]
    assert run["stopped_at"] == 1 and [c["step"] for c in run["checks"]] == [1] and 0 <= run["checks"][0]["asr"] <= 1
    assert summary["early_stop"]["rule"] == {"every": 1, "max_asr": 1.0, "judge": "oracle", "n_val": 2,
                                             "suites": ["figstep"], "validation_requests": 2}
    assert "| textual_unlearning | 1: " in (stopped / "report.md").read_text()


def test_validation_requests_are_never_the_attacked_ones(micro_overrides):
    from mmunlearn.config import load_config
    from mmunlearn.experiments.safety import load_data

    data = load_data(load_config([*micro_overrides, "safety.n_eval=5", "safety.early_stop={n_val:100}"]))
    attacked, validation = {p.id for p in data.attack_set}, {p.id for p in data.validation_set}
    assert len(attacked) == 5 and validation and not attacked & validation
    assert [p.id for p in load_data(load_config([*micro_overrides, "safety.n_eval=5"])).attack_set] == \
        [p.id for p in data.attack_set]  # the attacked sample is the same with or without a validation set
    with pytest.raises(DataError, match="none is left to validate on"):
        load_data(load_config([*micro_overrides, "safety.n_eval=1000", "safety.early_stop={n_val:5}"]))


@pytest.mark.parametrize("value, message", [
    ("{every:30}", "safety.early_stop.every: 30 leaves no check before the last of safety.train.steps=30"),
    ("{judge:llamaguard}", "safety.early_stop.judge: 'llamaguard' is not one of safety.judges"),
    ("{suites:[figstpe]}", "safety.early_stop.suites: figstpe is not a non-empty list of safety.suites"),
    ("{max_asr:2}", "safety.early_stop.max_asr: must be >= 0.0 and <= 1.0"),
    ("{evry:5}", "safety.early_stop: unknown key(s) ['evry']"),
    ("5", "config safety.early_stop: expected a mapping or null, got 5"),
])
def test_bad_early_stop_settings_are_one_line_errors(tmp_path, value, message, capsys):
    code = main(["safety", "run", "--out", str(tmp_path / "never"), f"safety.early_stop={value}",
                 "paths.cache_dir=/nonexistent"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
