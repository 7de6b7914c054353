import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from mmunlearn.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmunlearn.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_unknown_config_key_is_one_line_error():
    proc = run_cli("world", "build", "world.colour=red")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "world.colour" in lines[0]


def test_unhonourable_world_size_is_one_line_error():
    proc = run_cli("world", "build", "world.size=7")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["mmunlearn: error: world.size=7: must be an even integer >= 4"]


def test_wrong_type_is_one_line_error(capsys):
    assert main(["world", "build", "world.seed=abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "world.seed" in err[0]


def test_world_build_and_show(tmp_path, capsys):
    assert main(["world", "build", "world.size=10", "--out", str(tmp_path / "world.json")]) == 0
    assert "10 creatures, 40 facts" in capsys.readouterr().out
    out = tmp_path / "sheet.png"
    assert main(["world", "show", "--out", str(out), "--rows", "3", "world.size=10"]) == 0
    with Image.open(out) as img:
        assert img.size[0] > 500 and img.size[1] > 200


def test_pretrain_prints_table_and_path_last(tmp_path, micro_overrides):
    proc = run_cli("pretrain", *micro_overrides, f"paths.cache_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith(str(tmp_path)) and "| naming (image -> creature name) |" in proc.stdout
    again = run_cli("pretrain", *micro_overrides, f"paths.cache_dir={tmp_path}")
    assert again.stdout.strip().splitlines()[-1] == lines[-1] and "cached" in again.stdout


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _items(tmp_path) -> Path:
    for i in range(2):
        Image.new("RGB", (16, 16), (90 * i, 0, 0)).save(tmp_path / f"{i}.png")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"image": f"{i}.png", "question": f"q{i}?", "answers": [f"a{i}"]}) + "\n"
                             for i in range(2)))
    return items


def test_an_output_path_that_cannot_be_written_is_one_line_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for command in (["world", "build", "--out", str(blocker / "world.json"), "world.size=10"],
                    ["world", "show", "--out", str(blocker / "sheet.png"), "world.size=10"],
                    ["unlok", "export", "--out", str(blocker / "bench"), "world.size=10"],
                    ["unlok", "build", "--items", str(_items(tmp_path)), "--images", str(tmp_path), "--out",
                     str(blocker / "built")]):
        assert main(command) == 2
        assert f"output directory {blocker} is not writable" in _one_error(capsys)


def test_a_file_system_error_while_writing_names_the_file_in_one_line(tmp_path, capsys):
    taken = tmp_path / "sheet.png"
    taken.mkdir()  # a directory where the contact sheet is to go
    assert main(["world", "show", "--out", str(taken), "--rows", "2", "world.size=10"]) == 2
    assert str(taken) in _one_error(capsys)


def test_an_unwritable_cache_fails_before_training(tmp_path, micro_overrides, capsys, monkeypatch):
    import mmunlearn.pretrain.pipeline as pipeline

    def no_training(*_args, **_kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(pipeline, "_pretrain_into", no_training)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["pretrain", *micro_overrides, f"paths.cache_dir={blocker}"]) == 2
    assert f"cache directory {blocker / 'models'} is not writable" in _one_error(capsys)


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import mmunlearn.cli as cli

    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_world_build", interrupted)
    assert main(["world", "build"]) == 130
    assert "interrupted" in _one_error(capsys)
