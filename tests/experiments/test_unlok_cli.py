"""`mmunlearn unlok ...` end to end on the micro world: the run writes its files, real-format data goes
through the same path, and bad names fail before any work."""

from __future__ import annotations

import json

import pytest

from mmunlearn.cli import main

FAST = ["unlok.n_random=2", "unlok.n_retain=1", "unlok.edit.steps=2", "unlok.relearning.steps=1",
        "unlok.defense_params.head_projection.k=5", "unlok.attack_params.probe.n_train=4", "threads=1",
        "unlok.attack_params.pd2.layers=all"]  # the micro model has 2 layers: pd2 needs 3 hidden states


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_unlok_run_writes_manifest_samples_summary_report(tmp_path, cache, micro_overrides, capsys):
    out = tmp_path / "run"
    code = main(["unlok", "run", "--out", str(out), *micro_overrides, *FAST, f"paths.cache_dir={cache}",
                 "unlok.n_facts=3"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "| defense \\ attack |" in printed and printed.strip().splitlines()[-1] == str(out)
    for name in ("manifest.json", "samples.jsonl", "summary.json", "report.md"):
        assert (out / name).is_file()
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    n_defenses, n_attacks = 6, 8  # seven attacks + relearning
    assert sum(r["type"] == "measure" for r in rows) == 3 * (1 + n_defenses)
    assert sum(r["type"] == "attack" for r in rows) == 3 * (1 + n_defenses) * n_attacks
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_facts"] == 3 and "attack_success" in summary["tables"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["unlok"]["n_facts"] == 3 and "git_sha" in manifest
    assert len(manifest["model_fingerprint"]["sha256"]) == 64 and len(manifest["data_fingerprint"]) == 64


def test_exported_unlok_json_runs_through_the_same_protocol(tmp_path, cache, micro_overrides, capsys):
    data = tmp_path / "bench"
    assert main(["unlok", "export", "--out", str(data), "--n-facts", "3", *micro_overrides]) == 0
    capsys.readouterr()
    json_file = next(data.glob("*.json"))
    out = tmp_path / "run"
    code = main(["unlok", "run", "--out", str(out), *micro_overrides, *FAST, f"paths.cache_dir={cache}",
                 f"unlok.data={json_file}", "unlok.n_facts=null", "unlok.defenses=[fact_erasure]",
                 "unlok.attacks=[hp,multimodal]", "unlok.attack_params.multimodal.n_samples=1",
                 "unlok.relearning=null"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_facts"] == 3
    assert {(e["defense"], e["attack"]) for e in summary["attack_success"]} == {
        (d, a) for d in ("none", "fact_erasure") for a in ("hp", "multimodal")}


@pytest.mark.parametrize("override, message", [
    ("unlok.defenses=[fact_erasur]", "did you mean 'fact_erasure'"),
    ("unlok.attacks=[hp,multimodel]", "did you mean 'multimodal'"),
    ("+unlok.attack_params.hp.kk=3", "'kk'"),
    ("unlok.edit.method=qlora", "edit.method"),
    ("device=gpu0", "config device"),
    ("device=cuda:99", "config device: 'cuda:99' is not available"),
])
def test_bad_names_fail_in_one_line_before_any_work(tmp_path, override, message, capsys):
    code = main(["unlok", "run", "--out", str(tmp_path / "never"), override, "paths.cache_dir=/nonexistent"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "never").exists()


def test_data_file_without_records_fails_before_the_run_directory(tmp_path, capsys):
    data = tmp_path / "empty.json"
    data.write_text("[]")
    code = main(["unlok", "run", "--out", str(tmp_path / "never"), f"unlok.data={data}", "unlok.n_facts=null",
                 "paths.cache_dir=/nonexistent"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"mmunlearn: error: {data}: no records to edit"]
    assert not (tmp_path / "never").exists()


def test_export_draws_the_facts_unlok_run_would_edit(tmp_path, micro_overrides, capsys):
    from mmunlearn.config import load_config
    from mmunlearn.data.unlok_format import read_unlok_json
    from mmunlearn.experiments.unlok import load_benchmark

    chosen = ["unlok.n_facts=4", "unlok.seed=3"]
    assert main(["unlok", "export", "--out", str(tmp_path / "bench"), *micro_overrides, *chosen]) == 0
    exported = read_unlok_json(next((tmp_path / "bench").glob("*.json")), None)
    edited = load_benchmark(load_config([*micro_overrides, *chosen]))
    assert [r.id for r in exported.records] == [r.id for r in edited.records] and len(edited.records) == 4
    assert main(["unlok", "export", "--out", str(tmp_path / "two"), "--n-facts", "2", *micro_overrides,
                 *chosen]) == 0  # the option still wins over the config
    assert len(read_unlok_json(next((tmp_path / "two").glob("*.json")), None).records) == 2
