"""Both tracks end to end on tiny random models of families other than the embedded LLaVA: the whole protocol
(edits, every attack, relearning; safety training, every suite including PGD, judges) runs through the adapter."""

from __future__ import annotations

import json

import pytest

from mmunlearn.cli import main

WORLD = ["world.size=8", "world.image_size=16"]
UNLOK = ["unlok.n_facts=2", "unlok.batch_facts=2", "unlok.workers=1", "unlok.empty_answer=red",
         "unlok.attacks=[hp,pd,probe,question_paraphrase,image_paraphrase,multimodal]", "unlok.relearning.steps=1"]
SAFETY = ["safety.n_eval=3", "safety.n_utility=4", "safety.train.steps=2", "safety.train.batch_size=4",
          "safety.suite_params.pgd_image.steps=1", "threads=1"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "gemma3"])
def test_both_tracks_run_on_a_family_given_by_directory(family, model_dir, tmp_path, capsys):
    directory = str(model_dir(family))
    out = tmp_path / "run"
    code = main(["run", "--out", str(out), *WORLD, *UNLOK, *SAFETY,
                 f"unlok.model={directory}", f"safety.model={directory}", f"paths.cache_dir={tmp_path}/c"])
    assert code == 0, capsys.readouterr().err
    unlok = json.loads((out / "unlok" / "summary.json").read_text())
    safety = json.loads((out / "safety" / "summary.json").read_text())
    assert unlok["n_facts"] == 2, unlok.keys()
    assert not safety.get("suites_without_inputs"), "every suite, PGD included, attacks this family"
    pgd = [e for e in safety["asr"]["oracle"] if e["suite"] == "pgd_image"]
    assert len(pgd) == 5 and all(e["n"] > 0 for e in pgd), pgd
