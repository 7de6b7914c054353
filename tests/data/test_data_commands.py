"""`unlok` data subcommands: export, validate, review-sheet, build; bad input is one line and exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from unlok_cli import one_error_line, run

from mmunlearn.data.unlok_format import JSON_NAME, read_unlok_json

WORLD = ["world.size=8", "world.image_size=16", "world.seed=3", "world.heldout_share=0.25"]






def test_export_then_validate_and_review(tmp_path, capsys, micro_benchmark):
    out = tmp_path / "export"
    assert run(["export", "--out", str(out), "--n-facts", "8", "--image-format", "png", *WORLD]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2:] == ["wrote 8 records", str(out / JSON_NAME)]
    back = read_unlok_json(out / JSON_NAME)  # the same world and seed as the micro benchmark
    assert [(r.id, r.question, r.answer, r.alt_answer) for r in back] == \
        [(r.id, r.question, r.answer, r.alt_answer) for r in micro_benchmark]
    first = micro_benchmark.records[0]
    assert np.array_equal(np.asarray(back.image(back.records[0].paraphrase_images["hard"])),
                          np.asarray(micro_benchmark.image(first.paraphrase_images["hard"])))

    assert run(["validate", str(out / JSON_NAME), "--decode"]) == 0
    printed = capsys.readouterr().out
    assert f"{out / JSON_NAME}: 8 records valid" in printed and "decoded" in printed
    assert any(line.split() == ["paraphrase_images.medium", "8/8"] for line in printed.splitlines())
    assert any(line.split() == ["aliases", "0/8"] for line in printed.splitlines())

    sheet = tmp_path / "sheet"
    assert run(["review-sheet", str(out / JSON_NAME), "--images", str(out), "--out", str(sheet)]) == 0
    assert (sheet / "review.csv").is_file() and (sheet / "review.html").is_file()
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(sheet / "review.html")


def test_export_errors_are_one_line(tmp_path, capsys):
    assert run(["export", "--out", str(tmp_path / "x"), "--n-facts", "500", *WORLD]) == 2
    assert "n_facts=500" in one_error_line(capsys)
    assert run(["export", "--out", str(tmp_path / "x"), "--n-facts", "0", *WORLD]) == 2
    assert "--n-facts 0" in one_error_line(capsys)
    assert run(["export", "--out", str(tmp_path / "x"), "world.colour=red"]) == 2
    assert "world.colour" in one_error_line(capsys)


def test_validate_bad_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "a", "src": "q?", "pred": "x", "loc": 5, "image_id": 1}]')
    assert run(["validate", str(bad)]) == 2
    line = one_error_line(capsys)
    assert str(bad) in line and "record 'a'" in line and "field 'loc'" in line
    assert run(["validate", str(tmp_path / "absent.json")]) == 2
    assert "not found" in one_error_line(capsys)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert run(["validate", str(empty)]) == 2
    assert str(empty) in (line := one_error_line(capsys)) and "no records" in line


def _write_items(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    items = []
    for i in range(9):
        colour = ["red", "green", "blue"][i % 3]
        arr = np.zeros((24, 24, 3)) + np.array({"red": (220, 30, 30), "green": (30, 200, 40),
                                                "blue": (20, 40, 230)}[colour]) + rng.normal(0, 10 * i, (24, 24, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / f"img{i}.png")
        items.append({"id": f"q{i}", "image": f"img{i}.png", "question": "What colour is the card?",
                      "answers": [colour]})
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path, root


def test_build_writes_a_readable_benchmark(tmp_path, capsys):
    items, root = _write_items(tmp_path)
    out = tmp_path / "built"
    assert run(["build", "--items", str(items), "--images", str(root), "--out", str(out), "--n-paraphrases", "2",
                "--check-tiers"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("tier-consistency: kept ") and printed[-1] == str(out / JSON_NAME)
    bench = read_unlok_json(out / JSON_NAME)
    assert len(bench) == int(printed[-2].split()[1]) >= 1
    record = bench.records[0]
    assert record.answer in ("red", "green", "blue") and len(record.question_paraphrases) == 2
    assert set(record.neighbour_images) == {"easy", "medium", "hard"}


@pytest.mark.parametrize("extra,words", [
    (["--paraphraser", "rul"], "did you mean 'rule'"),
    (["--embedder", "pixel"], "did you mean 'pixels'"),
    (["--paraphraser", "rule", "--paraphraser-model", "some/model"], "takes no model"),
    (["--embedder", "hf"], "needs a model"),
])
def test_build_bad_components_are_one_line(tmp_path, capsys, extra, words):
    items, root = _write_items(tmp_path)
    assert run(["build", "--items", str(items), "--images", str(root), "--out", str(tmp_path / "o"), *extra]) == 2
    assert words in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_build_bad_item_names_line(tmp_path, capsys):
    items, root = _write_items(tmp_path)
    items.write_text(items.read_text() + '{"image": "img0.png", "question": "?", "answers": []}\n')
    assert run(["build", "--items", str(items), "--images", str(root), "--out", str(tmp_path / "o")]) == 2
    assert f"{items}:10: item #9: field 'answers'" in one_error_line(capsys)
