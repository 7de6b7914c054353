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
