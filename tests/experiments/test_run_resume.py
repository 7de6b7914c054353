"""`mmunlearn run`: same seed and config give byte-identical summaries, a rerun resumes without duplicating
work, and a run killed with SIGKILL resumes to the same summary as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmunlearn.cli import main

FAST = ["unlok.n_facts=3", "unlok.batch_facts=1", "unlok.n_random=2", "unlok.n_retain=1", "unlok.edit.steps=2",
        "unlok.relearning.steps=1",
        "unlok.defense_params.head_projection.k=5", "unlok.attack_params.probe.n_train=4",
        "unlok.attack_params.pd2.layers=all", "unlok.defenses=[fact_erasure,head_projection]",
        "safety.n_eval=2", "safety.n_utility=3", "safety.train.steps=2", "safety.train.batch_size=4",
        "safety.suites=[text,figstep,query_relevant]", "safety.runs=[base,textual_unlearning]", "threads=1"]


def _run(out: Path, cache: Path, overrides: list[str]) -> int:
    return main(["run", "--out", str(out), *overrides, *FAST, f"paths.cache_dir={cache}"])


def _summaries(run_dir: Path) -> dict[str, bytes]:
    return {t: (run_dir / t / "summary.json").read_bytes() for t in ("unlok", "safety")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, micro_overrides):
    root = tmp_path_factory.mktemp("reference")
    assert _run(root / "run", root / "cache", micro_overrides) == 0
    return root


def test_same_seed_and_config_give_byte_identical_summaries(reference, tmp_path, micro_overrides):
    assert _run(tmp_path / "run", reference / "cache", micro_overrides) == 0
    assert _summaries(tmp_path / "run") == _summaries(reference / "run")


def test_rerun_resumes_skips_finished_units_and_duplicates_nothing(reference, tmp_path, micro_overrides):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference / "run", run)
    units = sorted((run / "unlok" / "units").glob("*.json"))
    assert len(units) == 3
    stamps = {u.name: u.stat().st_mtime_ns for u in units[:2]}
    units[2].unlink()  # as if the run had stopped before the last fact
    assert _run(run, reference / "cache", micro_overrides) == 0
    assert sorted(p.name for p in (run / "unlok" / "units").glob("*.json")) == [u.name for u in units]
    assert {u.name: (run / "unlok" / "units" / u.name).stat().st_mtime_ns for u in units[:2]} == stamps
    samples = (run / "unlok" / "samples.jsonl").read_text().splitlines()
    assert samples == (reference / "run" / "unlok" / "samples.jsonl").read_text().splitlines()
    assert _summaries(run) == _summaries(reference / "run")


def test_grouped_edits_resume_by_whole_groups(tmp_path, micro_overrides):
    grouped = [o for o in FAST if o != "unlok.batch_facts=1"] + ["unlok.batch_facts=2"]

    def run(name: str) -> int:
        return main(["run", "--tracks", "unlok", "--out", str(tmp_path / name), *micro_overrides, *grouped,
                     f"paths.cache_dir={tmp_path}/c"])

    assert run("a") == 0
    units = sorted((tmp_path / "a" / "unlok" / "units").glob("*.json"))
    assert [u.name[:5] for u in units] == ["00000", "00002"]  # groups of two facts: [0, 1], [2]
    first = units[0].stat().st_mtime_ns
    units[1].unlink()
    assert run("a") == 0
    assert units[0].stat().st_mtime_ns == first and units[1].is_file()
    assert run("b") == 0
    assert (tmp_path / "a" / "unlok" / "summary.json").read_bytes() == \
        (tmp_path / "b" / "unlok" / "summary.json").read_bytes()


def test_worker_processes_give_the_single_process_summary(reference, tmp_path, micro_overrides):
    """Two workers of one thread each (threads=2 shared by workers=2) against one process of one thread."""
    overrides = [o for o in FAST if o != "threads=1"] + ["threads=2", "unlok.workers=2"]
    code = main(["run", "--tracks", "unlok", "--out", str(tmp_path / "run"), *micro_overrides, *overrides,
                 f"paths.cache_dir={reference / 'cache'}"])
    assert code == 0
    run = tmp_path / "run" / "unlok"
    units = [json.loads(u.read_text()) for u in sorted((run / "units").glob("*.json"))]
    assert len(units) == 3 and all(u["threads"] == 1 for u in units), "threads shared out, not multiplied"
    assert json.loads((run / "timings.json").read_text())["workers"] == 2
    assert (run / "summary.json").read_bytes() == (reference / "run" / "unlok" / "summary.json").read_bytes()
    assert (run / "samples.jsonl").read_text() == (reference / "run" / "unlok" / "samples.jsonl").read_text()


def test_both_tracks_in_one_queue_of_workers_give_the_single_process_summaries(reference, tmp_path,
                                                                               micro_overrides):
    """`mmunlearn run` with two workers: UnLOK groups and safety runs share one queue; both summaries (and
    the samples) are the single-process run's."""
    overrides = [o for o in FAST if o != "threads=1"] + ["threads=2", "unlok.workers=2"]
    code = main(["run", "--out", str(tmp_path / "run"), *micro_overrides, *overrides,
                 f"paths.cache_dir={reference / 'cache'}"])
    assert code == 0
    run = tmp_path / "run"
    pooled = json.loads((run / "timings.json").read_text())
    assert pooled["pooled_units"] == 3 + 2 and pooled["workers"] == 2  # 3 facts in groups of 1, 2 safety runs
    assert len(list((run / "safety" / "units").glob("*.json"))) == 2
    assert _summaries(run) == _summaries(reference / "run")
    for track in ("unlok", "safety"):
        assert (run / track / "samples.jsonl").read_text() == (reference / "run" / track / "samples.jsonl").read_text()


def test_the_pooled_run_pretrains_the_shared_model_in_the_parent_with_all_threads_before_the_workers(
        tmp_path, micro_overrides, monkeypatch):
    """A cold pooled run: the model is trained once, here, on every thread; the workers start after it and
    find it cached (each would otherwise train its own copy on its share of the threads)."""
    import torch

    from mmunlearn import cli
    from mmunlearn.config import load_config
    from mmunlearn.experiments import workers
    from mmunlearn.pretrain import pipeline

    events: list[tuple[str, int]] = []

    def fake_pretrain(cfg, force=False, log=print):
        torch.set_num_threads(int(cfg.threads))
        events.append(("pretrain", torch.get_num_threads()))

    def fake_workers(cfg, dirs, jobs, n, on_unit):
        events.append(("workers", n))

    monkeypatch.setattr(pipeline, "pretrain", fake_pretrain)
    monkeypatch.setattr(workers, "run_in_workers", fake_workers)
    before = torch.get_num_threads()
    try:
        cfg = load_config([*micro_overrides, *[o for o in FAST if o != "threads=1"], "threads=2", "unlok.workers=2",
                           f"paths.cache_dir={tmp_path}/c"])
        cli._run_pooled(cfg, tmp_path / "run", list(cli.TRACKS))
    finally:
        torch.set_num_threads(before)
    assert events == [("pretrain", 2), ("workers", 2)]
    timings = json.loads((tmp_path / "run" / "timings.json").read_text())
    assert {"model_seconds_this_call", "pooled_seconds_this_call"} <= set(timings)


@pytest.mark.parametrize(("overrides", "expected"), [(["threads=3"], 3), (["threads=3", "unlok.model=some/model"], 1),
                                                     (["threads=3", "device=cuda"], 1), (["threads=64"], 8),
                                                     (["unlok.workers=2", "unlok.model=some/model"], 2),
                                                     (["unlok.workers=12"], 12)])
def test_auto_workers_are_one_per_thread_and_core_for_the_tiny_model_on_the_cpu_only(overrides, expected,
                                                                                      monkeypatch):
    import mmunlearn.experiments.workers as workers
    from mmunlearn.config import load_config

    monkeypatch.setattr(workers, "usable_cpus", lambda: 8)  # threads beyond the cores add no worker
    assert workers.configured_workers(load_config(overrides)) == expected
    assert workers.configured_workers(load_config(["model=smol"])) == 1


@pytest.mark.parametrize("value", ["0", "two"])
def test_bad_worker_count_is_a_one_line_error(tmp_path, micro_overrides, capsys, value):
    code = main(["run", "--tracks", "unlok", "--out", str(tmp_path / "run"), *micro_overrides, *FAST,
                 f"unlok.workers={value}", f"paths.cache_dir={tmp_path}/c"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unlok.workers" in err[0]


def test_a_directory_of_another_config_is_refused(reference, tmp_path, micro_overrides, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference / "run", run)
    code = main(["run", "--out", str(run), *micro_overrides, *FAST, "unlok.seed=5",
                 f"paths.cache_dir={reference / 'cache'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "another config" in err[0]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_run_whose_model_does_not_load_leaves_no_claim_behind(tmp_path, micro_overrides, capsys, workers):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    bad_model = [f"unlok.model={empty}", f"safety.model={empty}", f"unlok.workers={workers}"]
    run = tmp_path / "run"
    for seed in ("0", "5"):  # the second config is not refused as "another config": nothing was claimed
        code = main(["run", "--out", str(run), *micro_overrides, *FAST, *bad_model, f"unlok.seed={seed}",
                     f"paths.cache_dir={tmp_path}/c"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "no config.json" in err[0]
        assert not run.exists()


def test_unwritable_output_directory_fails_before_work(tmp_path, micro_overrides, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["run", "--out", str(blocker / "run"), *micro_overrides, *FAST, f"paths.cache_dir={tmp_path}/c"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not writable" in err[0]
    assert not (tmp_path / "c").exists()  # nothing was pretrained


@pytest.mark.slow
def test_sigkill_at_any_point_resumes_to_the_same_summary(reference, tmp_path, micro_overrides):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mmunlearn.cli", "run", "--out", str(run), *micro_overrides, *FAST,
           f"paths.cache_dir={reference / 'cache'}"]
    for wait_for in ("unlok/units", "safety/units"):  # kill once mid-UnLOK, once mid-safety
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if any((run / wait_for).glob("*.json")):
                break
            time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert _summaries(run) == _summaries(reference / "run")


def test_a_worker_error_stops_the_run_with_its_one_line_message(tmp_path, micro_overrides):
    from mmunlearn.config import load_config
    from mmunlearn.errors import MMUnlearnError
    from mmunlearn.experiments.workers import run_in_workers

    cfg = load_config([*micro_overrides, *FAST, f"paths.cache_dir={tmp_path}/c"])
    finished: list[tuple[str, int]] = []
    with pytest.raises(MMUnlearnError, match=r"^worker process: \w+Error") as error:
        run_in_workers(cfg, {"unlok": tmp_path / "run"}, [("unlok", 10_000)], 1,
                       on_unit=lambda *job: finished.append(job))  # no fact at 10,000
    assert "\n" not in str(error.value) and not finished


def test_a_failing_worker_ends_the_command_with_its_message_alone(tmp_path, micro_overrides, capsys):
    """pd2 cannot run on the micro model's 2 layers; given as a directory, the model's layer count is known only
    once a worker loads it, so a worker fails at its first group and the parent terminates the other mid-group.
    Nothing the terminated worker held is reported leaked after the run's one-line error (tqdm's default lock,
    a multiprocessing semaphore, was: `resource_tracker: There appear to be 1 leaked semaphore objects`)."""
    assert main(["pretrain", *micro_overrides, f"paths.cache_dir={tmp_path}/c"]) == 0
    model_dir = capsys.readouterr().out.strip().splitlines()[-1]
    cmd = [sys.executable, "-m", "mmunlearn.cli", "run", "--tracks", "unlok", "--out", str(tmp_path / "run"),
           *micro_overrides, "threads=2", "unlok.workers=2", "unlok.n_facts=24", "unlok.batch_facts=4",
           f"unlok.model={model_dir}", f"paths.cache_dir={tmp_path}/c"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and lines[-1].startswith("mmunlearn: error: worker process: ConfigError"), lines
    assert "pd2" in lines[-1] and "resource_tracker" not in proc.stderr and "leaked" not in proc.stderr


def test_checkpoints_come_back_from_worker_processes(tmp_path, micro_overrides):
    """`safety.eval_steps` with two workers: the checkpoint rows and their compute travel in the units' JSON and
    give the single-process summary and checkpoints.jsonl."""
    common = [*micro_overrides, *[o for o in FAST if o != "threads=1"], "safety.eval_steps=[1]",
              f"paths.cache_dir={tmp_path}/c"]
    assert main(["run", "--out", str(tmp_path / "one"), *common, "threads=1"]) == 0
    assert main(["run", "--out", str(tmp_path / "two"), *common, "threads=2", "unlok.workers=2"]) == 0
    assert json.loads((tmp_path / "two" / "timings.json").read_text())["workers"] == 2
    for name in ("summary.json", "checkpoints.jsonl", "samples.jsonl"):
        assert (tmp_path / "two" / "safety" / name).read_bytes() == (tmp_path / "one" / "safety" / name).read_bytes()
    summary = json.loads((tmp_path / "one" / "safety" / "summary.json").read_text())
    assert [(c["run"], c["step"]) for c in summary["checkpoints"]["compute"]] == [("textual_unlearning", 1),
                                                                                 ("textual_unlearning", 2)]
