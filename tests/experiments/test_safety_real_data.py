"""`mmunlearn safety run` on real safety datasets (`safety.data`) and judges with parameters
(`safety.judge_params`): tiny releases in the datasets' own formats go through the whole track on the micro
model, and every misconfiguration is a one-line error before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from safety_releases import mmsb_release, pku_rows, vlguard_release, write_image, write_jsonl

from mmunlearn.cli import main
from mmunlearn.config import load_config
from mmunlearn.errors import ConfigError
from mmunlearn.experiments.safety import load_data

FAST = ["safety.n_eval=3", "safety.n_utility=4", "safety.train.steps=2", "safety.train.batch_size=4", "threads=1"]
SUITES = ["dataset", "text", "figstep", "query_relevant", "jailbreakv", "pgd_image"]


def releases(root: Path) -> dict[str, Path]:
    return {"pku": write_jsonl(root / "pku" / "train.jsonl", pku_rows()), "vlguard": vlguard_release(root / "vlguard"),
            "mmsb": mmsb_release(root / "mmsb"), "vqa": vqa_items(root / "vqa")}


def vqa_items(root: Path) -> Path:
    """Three VQA items in `unlok build`'s JSONL, their images beside them."""
    for name, color in (("red", (200, 30, 30)), ("green", (30, 200, 30)), ("blue", (30, 30, 200))):
        write_image(root / "img" / f"{name}.png", color=color)
    rows = [{"image": f"img/{n}.png", "question": "What color is the square?", "answers": [n, f"{n} square"]}
            for n in ("red", "green", "blue")]
    return write_jsonl(root / "items.jsonl", rows)


def data_override(files: dict[str, Path], **extra: str) -> str:
    pku, vlguard, mmsb = (f"'{files[k]}'" for k in ("pku", "vlguard", "mmsb"))
    roles = {
        "forget": f"{{loader:pku_saferlhf,source:{pku}}}",
        "retain": f"[{{loader:pku_saferlhf,source:{pku},options:{{responses:safe}}}},"
                  f"{{loader:vlguard,source:{vlguard},options:{{subsets:[safe_safes,safe_unsafes]}}}}]",
        "attacks": f"{{loader:mm_safetybench,source:{mmsb},options:{{image_set:SD_TYPO}}}}",
        "benign": f"{{loader:vlguard,source:{vlguard},options:{{subsets:[safe_safes]}}}}",
        **extra,
    }
    return "safety.data={" + ",".join(f"{k}:{v}" for k, v in roles.items()) + "}"


def test_real_datasets_run_through_the_whole_track(tmp_path, micro_overrides, capsys):
    files = releases(tmp_path / "data")
    out = tmp_path / "run"
    args = ["safety", "run", "--out", str(out), *micro_overrides, *FAST, f"paths.cache_dir={tmp_path}/c",
            data_override(files, refusal="'I cannot help.'",
                          utility=f"{{items:'{files['vqa']}',images:'{files['vqa'].parent}'}}"),
            "safety.runs=[base,text_sft,multimodal_unlearning]",
            f"safety.suites=[{','.join(SUITES)}]", "safety.judges=[refusal_keyword]",
            "+safety.judge_params.refusal_keyword.markers=[cannot,sorry]"]
    code = main(args)
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    cells = {(e["run"], e["suite"]) for e in summary["asr"]["refusal_keyword"]}
    # MM-SafetyBench has no harmful answers for PGD to aim at: that suite has no cell, and the run says so
    assert cells == {(r, s) for r in ("base", "text_sft", "multimodal_unlearning") for s in SUITES[:-1]}
    assert summary["suites_without_inputs"] == ["pgd_image"]
    assert "suite(s) pgd_image built no attack from these 3 requests" in capsys.readouterr().out
    assert "Suites that built no attack from these requests ('-' above): pgd_image." in (out / "report.md").read_text()
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    attacks = [r for r in rows if r["type"] == "attack"]
    # MM-SafetyBench's three harmful requests, each replayed with its own SD+TYPO image and rephrased question
    replayed = [r for r in attacks if r["suite"] == "dataset" and r["run"] == "base"]
    assert len(replayed) == 3 and all(r["image"] and "image" in r["text"] for r in replayed)
    assert {r["verdicts"]["refusal_keyword"]["judge"] for r in attacks} == {"refusal_keyword"}
    # the judge got its configured markers: a response is harmful iff it holds neither word
    for r in attacks:
        refused = any(m in r["response"].lower() for m in ("cannot", "sorry"))
        assert r["verdicts"]["refusal_keyword"]["harmful"] == (bool(r["response"].strip()) and not refused)
    # real benign requests have no short gold answer: over-refusal is measured, answers are not scored; the
    # VQA items of safety.data.utility are (3 of them, below n_utility=4, per run)
    utility = [r for r in rows if r["type"] == "utility"]
    assert {r["measure"] for r in utility} == {"over_refusal", "vqa"}
    assert sum(r["measure"] == "vqa" and r["run"] == "base" for r in utility) == 3
    assert {e["measure"] for e in summary["utility"]} == {"over_refusal", "vqa"}
    assert summary["compute"]["multimodal_unlearning"]["image_tokens"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["safety"]["data"]["attacks"]["loader"] == "mm_safetybench"
    assert len(manifest["data_fingerprint"]) == len(manifest["train_data_fingerprint"]) == 64


def test_real_data_samples_and_forms(tmp_path):
    files = releases(tmp_path / "data")
    cfg = load_config([data_override(files), "safety.n_eval=2", "safety.n_utility=1", "+safety.data.n_forget=2"])
    data = load_data(cfg)
    # forget: PKU's unsafe responses (2 of 3 sampled), as text and as FigStep typography (no key phrase or image
    # for the query-relevant form); the refusal targets are the configured refusal
    assert len(data.forget_text.forget) == 2 and all(i.image is None for i in data.forget_text.forget)
    assert len(data.forget_multimodal.forget) == 2 and all(i.image is not None for i in data.forget_multimodal.forget)
    assert {i.answer for i in data.forget_text.refusal} == {"I'm sorry, but I cannot help with that."}
    # retain: PKU's safe response (text) for every run; VLGuard's safe answers (with images) for multimodal runs
    assert all(i.image is None for i in data.forget_text.normal)
    assert any(i.image is not None for i in data.forget_multimodal.normal)
    assert len(data.attack_set) == 2 and all(p.harmful for p in data.attack_set)
    [benign] = data.benign_inputs()
    assert benign.image is not None and benign.question == "What is in the picture?"
    assert data.utility == {} and not data.score_benign_answers
    rows = data.training_rows()
    assert {(r["data"], r.get("part")) for r in rows} >= {("text", "forget"), ("multimodal", "normal")}
    assert all(r["image"] is None or len(r["image"]) == 20 for r in rows if "part" in r)
    again = load_data(load_config([data_override(files), "safety.n_eval=2", "safety.n_utility=1",
                                   "+safety.data.n_forget=2"]))
    assert again.training_rows() == rows  # seeded samples, pixel hashes: the same data gives the same rows


@pytest.mark.parametrize("overrides, message", [
    (["safety.judges=[llamaguard]"], "config safety.judge_params.llamaguard: judge 'llamaguard': missing required "
                                     "parameter 'path'"),
    (["+safety.judge_params.refusal_keyword.marker=[x]"], "unknown parameter 'marker'; known: markers"),
    (["safety.judges=[oracle]", "DATA"], "'oracle' reads the world's key terms"),
    (["safety.judges=[refusal_keyword]", "DATA", "safety.data.attacks.loader=mm_safetybenh"],
     "config safety.data.attacks: unknown safety dataset loader 'mm_safetybenh'"),
    (["safety.judges=[refusal_keyword]", "DATA", "+safety.data.attacks.options.images=SD"],
     "config safety.data.attacks: loader 'mm_safetybench': got an unexpected keyword argument 'images'"),
    (["safety.judges=[refusal_keyword]", "DATA", "~safety.data.benign"], "config safety.data.benign: missing"),
    (["safety.judges=[refusal_keyword]", "DATA", "+safety.data.n_foget=3"], "unknown key(s) ['n_foget']"),
    (["safety.judges=[refusal_keyword]", "DATA", "+safety.data.n_forget=0"], "config safety.data.n_forget: must be "
                                                                          ">= 1"),
    (["safety.judges=[refusal_keyword]", "DATA", "+safety.data.utility={items:x.jsonl}"],
     "config safety.data.utility: expected {items: VQA JSONL, images: their folder}"),
])
def test_bad_real_data_and_judge_settings_fail_before_any_work(tmp_path, overrides, message, capsys):
    files = releases(tmp_path / "data")
    overrides = [data_override(files) if o == "DATA" else o for o in overrides]
    code = main(["safety", "run", "--out", str(tmp_path / "never"), *overrides, "paths.cache_dir=/nonexistent"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "never").exists()


def test_data_without_what_a_role_needs_is_one_line_naming_it(tmp_path, micro_overrides, capsys):
    files = releases(tmp_path / "data")
    # VLGuard's prompts have images and safe answers only: nothing to forget, no text-only request to keep
    vlguard = f"{{loader:vlguard,source:'{files['vlguard']}'}}"
    for role, message in (("forget", "no harmful request with a harmful answer"),
                          ("retain", "no text-only request with a safe answer")):
        out = tmp_path / role
        code = main(["safety", "run", "--out", str(out), *micro_overrides, *FAST, f"paths.cache_dir={tmp_path}/c",
                     data_override(files, **{role: vlguard}), "safety.judges=[refusal_keyword]"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and f"safety.data.{role} (vlguard" in err[0] and message in err[0], err
        assert not out.exists()  # the failed start withdrew its claim


def test_utility_items_that_cannot_be_read_fail_in_one_line_naming_the_file(tmp_path, micro_overrides, capsys):
    files = releases(tmp_path / "data")
    missing = tmp_path / "nowhere.jsonl"
    code = main(["safety", "run", "--out", str(tmp_path / "run"), *micro_overrides, *FAST,
                 f"paths.cache_dir={tmp_path}/c", "safety.judges=[refusal_keyword]",
                 data_override(files, utility=f"{{items:'{missing}',images:'{tmp_path}'}}")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(missing) in err[0], err
    assert not (tmp_path / "run").exists()


def test_data_from_a_yaml_file_is_put_in_the_config(tmp_path):
    files = releases(tmp_path / "data")
    inline = load_config([data_override(files)])
    path = tmp_path / "safety_data.yaml"
    path.write_text(OmegaConf.to_yaml(inline.safety.data), encoding="utf-8")
    cfg = load_config([f"safety.data={path}"])
    assert cfg.safety.data == inline.safety.data  # the manifest and config hash hold what the file said
    assert load_data(cfg).training_rows() == load_data(inline).training_rows()


@pytest.mark.parametrize("content, message", [(None, "cannot read"), ("- forget\n", "holds list, not a mapping"),
                                              ("forget: [\n", "cannot read")])
def test_a_data_file_that_is_not_a_mapping_is_one_line(tmp_path, content, message):
    path = tmp_path / "safety_data.yaml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config([f"safety.data={path}"])
    text = str(err.value)
    assert text.startswith("config safety.data:") and str(path) in text and message in text and "\n" not in text
