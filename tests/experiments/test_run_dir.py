"""A run directory's claim: a fresh claim whose work fails before any unit is finished is withdrawn; finished
work, a resumed claim and whatever else the directory holds are left as they are."""

from __future__ import annotations

import json

import pytest

from mmunlearn.errors import ConfigError
from mmunlearn.runner.run_dir import MANIFEST, Units, claim, claimed

CONFIG = {"seed": 0}


def _fail_inside(run_dir, config=CONFIG, work=lambda: None) -> None:
    with pytest.raises(RuntimeError, match="model did not load"):
        with claimed(run_dir, config, {}):
            claim(run_dir / "unlok", config, {})  # a track's claim inside the run's, as `mmunlearn run` makes
            Units(run_dir / "unlok")
            work()
            raise RuntimeError("model did not load")


def test_a_failed_start_withdraws_the_claim_so_another_config_can_use_the_directory(tmp_path):
    run = tmp_path / "run"
    _fail_inside(run)
    assert not run.exists()  # the claim made it, so it goes
    run.mkdir()  # the user's own folder stays, empty as it was
    _fail_inside(run)
    assert run.is_dir() and list(run.iterdir()) == []
    assert claim(run, {"seed": 5}, {}) is False  # not "holds a run of another config"


def test_a_finished_unit_keeps_the_claim_for_the_next_call_to_resume(tmp_path):
    run = tmp_path / "run"
    _fail_inside(run, work=lambda: Units(run / "unlok").save(0, "fact-0", {"rows": []}))
    assert (run / MANIFEST).is_file() and (run / "unlok" / MANIFEST).is_file()
    assert claim(run, CONFIG, {}) is True
    with pytest.raises(ConfigError, match="another config"):
        claim(run, {"seed": 5}, {})


def test_a_resumed_claim_is_never_withdrawn(tmp_path):
    run = tmp_path / "run"
    claim(run, CONFIG, {})
    _fail_inside(run)
    assert json.loads((run / MANIFEST).read_text())["config"] == CONFIG


def test_the_users_own_files_and_deeper_runs_stay(tmp_path):
    run = tmp_path / "out"
    (run / "notes").mkdir(parents=True)
    (run / "notes" / "plan.txt").write_text("mine")
    (run / "empty").mkdir()
    older = run / "sweep" / "job-0"
    claim(older, {"seed": 1}, {})  # another run two levels down, no unit finished
    _fail_inside(run)
    assert (run / "notes" / "plan.txt").read_text() == "mine" and (run / "empty").is_dir()
    assert (older / MANIFEST).is_file()
    assert not (run / MANIFEST).exists() and not (run / "unlok").exists()


def test_an_atomic_file_is_renamed_into_place_whole_or_leaves_nothing(tmp_path):
    from mmunlearn.runner.manifest import atomic_file

    target = tmp_path / "out" / "sheet.txt"
    with atomic_file(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and sorted(p.name for p in target.parent.iterdir()) == ["sheet.txt"]
    with pytest.raises(OSError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise OSError("disk full")
    assert target.read_text() == "whole" and sorted(p.name for p in target.parent.iterdir()) == ["sheet.txt"]


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _claim_owned_by(run_dir, pid: int, host: str | None = None) -> None:
    import socket

    claim(run_dir, CONFIG, {})
    manifest = json.loads((run_dir / MANIFEST).read_text())
    manifest["owner"] = {"host": host or socket.gethostname(), "pid": pid}
    (run_dir / MANIFEST).write_text(json.dumps(manifest))


def test_a_claim_whose_process_was_killed_before_its_first_unit_is_taken_over(tmp_path):
    run = tmp_path / "run"
    _claim_owned_by(run, _dead_pid())  # SIGKILL while the model loaded: nothing could withdraw it
    assert claim(run, {"seed": 5}, {}) is False
    assert json.loads((run / MANIFEST).read_text())["config"] == {"seed": 5}


@pytest.mark.parametrize("case", ["owner alive", "unit finished", "other host", "no owner"])
def test_another_configs_claim_is_refused_unless_abandoned(tmp_path, case):
    import os

    run = tmp_path / "run"
    if case == "owner alive":
        _claim_owned_by(run, os.getpid())
    elif case == "unit finished":
        _claim_owned_by(run, _dead_pid())
        Units(run / "unlok").save(0, "fact-0", {"rows": []})
    elif case == "other host":
        _claim_owned_by(run, _dead_pid(), host="another-node")
    else:
        run.mkdir()
        (run / MANIFEST).write_text(json.dumps({"config": CONFIG, "config_hash": "older-run"}))
    with pytest.raises(ConfigError, match="another config"):
        claim(run, {"seed": 5}, {})


def test_a_workers_unit_finished_after_its_parent_died_is_not_written(tmp_path):
    import os

    from mmunlearn.experiments.workers import UnitsWhileParentLives

    alive = UnitsWhileParentLives(tmp_path / "unlok", os.getppid())
    alive.save(0, "fact-0", {"rows": []})
    orphaned = UnitsWhileParentLives(tmp_path / "unlok", _dead_pid())  # not this process's parent any more
    with pytest.raises(SystemExit):
        orphaned.save(1, "fact-1", {"rows": []})
    assert alive.load(0, "fact-0") is not None and alive.load(1, "fact-1") is None


def test_a_resumed_claim_belongs_to_the_resuming_process(tmp_path):
    run = tmp_path / "run"
    _claim_owned_by(run, _dead_pid())  # killed before its first unit, then resumed with the same config
    assert claim(run, CONFIG, {}) is True
    with pytest.raises(ConfigError, match="another config"):  # the resumed run is alive: not abandoned
        claim(run, {"seed": 5}, {})
