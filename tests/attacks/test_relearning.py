"""Relearning many facts at once equals relearning each alone, on top of each fact's own edit."""

from __future__ import annotations

import pytest
import torch

from mmunlearn.attacks.relearning import RelearnConfig, Relearning, relearn_rows
from mmunlearn.defenses import EditConfig, EditExamples, Editor, forward_terms, get_defense
from mmunlearn.defenses.batched_editor import BatchedEditor
from mmunlearn.defenses.losses import Defense, EditTerms
from mmunlearn.models.adapters.base import VLMInput

CONFIG = RelearnConfig(steps=3, lr=5e-3)


class _Nll(Defense):
    """The relearning objective, written out for the reference: mean NLL of the rows' own answers."""

    def loss(self, terms: EditTerms) -> torch.Tensor:
        return -terms.target_logprob.mean()


def _reference(adapter, bench, record) -> tuple[str, list[float]]:
    """One fact relearned alone on the full weights (the sequential attack), then restored."""
    editor = Editor(adapter, EditConfig(method="full", modules=CONFIG.modules, layers=CONFIG.layers,
                                        lr=CONFIG.lr, steps=CONFIG.steps))
    with editor.edited(_Nll(), EditExamples(relearn_rows(bench, record))) as log:
        answer = adapter.generate([VLMInput(bench.image(record.image), record.question)], max_new_tokens=8)[0]
    return answer, log.losses


@pytest.mark.parametrize("max_slot_params", [CONFIG.max_slot_params, 1])  # all facts at once; one by one
def test_group_relearning_equals_each_fact_alone_under_its_edit(micro_adapter, micro_benchmark, max_slot_params):
    records = micro_benchmark.records[:3]
    before = {k: v.clone() for k, v in micro_adapter.model.state_dict().items()}
    with BatchedEditor(micro_adapter, EditConfig(lr=0.05, steps=3, layers=(1,)), slots=3) as batched:
        batched.edit_many(get_defense("fact_erasure"),
                          [EditExamples([VLMInput(micro_benchmark.image(r.image), r.question, r.answer)])
                           for r in records])
        relearn = Relearning(micro_adapter, RelearnConfig(steps=3, lr=5e-3, max_slot_params=max_slot_params),
                             router=batched.router)
        assert (relearn.chunk_size() >= 3) == (max_slot_params > 1)
        together = relearn.attack_many(micro_benchmark, records)
        for i, record in enumerate(records):
            with batched.slot(i):
                answer, losses = _reference(micro_adapter, micro_benchmark, record)
            assert together[i]["candidates"] == [answer]
            assert together[i]["details"]["losses"] == pytest.approx(losses, rel=1e-4, abs=1e-5)
        # the edits matter: fact 0 relearned through slot 1's edit is another run
        assert together[0]["details"]["losses"][0] != pytest.approx(
            relearn.attack_many(micro_benchmark, [records[1], records[0]])[1]["details"]["losses"][0], abs=1e-6)
    after = micro_adapter.model.state_dict()
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)


def test_relearning_moves_the_weights_it_trains(micro_adapter, micro_benchmark):
    record = micro_benchmark.records[0]
    out = Relearning(micro_adapter, CONFIG).attack(micro_benchmark, record)
    losses = out["details"]["losses"]
    assert len(losses) == CONFIG.steps and losses[-1] < losses[0]
    rows = relearn_rows(micro_benchmark, record)
    assert out["details"]["n_rows"] == len(rows)
    assert forward_terms(micro_adapter, rows, None).target_logprob.sum().item() == pytest.approx(
        -sum(losses[:1]) * len(rows), rel=1e-4)  # the first step saw the untouched model
