"""The per-fact protocol on the micro model: rows are complete, pre measures precede edits, and the model
is the original one, bit for bit, after every fact."""

from __future__ import annotations

import pytest
import torch

from mmunlearn.attacks.registry import get_attack
from mmunlearn.attacks.relearning import RelearnConfig, Relearning, relearn_rows
from mmunlearn.defenses import EditConfig, Editor, get_defense
from mmunlearn.experiments.unlok_protocol import Protocol, ProtocolConfig, plan_fact


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_plan_is_fixed_and_keeps_random_and_retain_facts_apart(micro_benchmark):
    config = ProtocolConfig(n_random=3, n_retain=2)
    record = micro_benchmark.records[0]
    plan = plan_fact(micro_benchmark, record, config)
    assert plan_fact(micro_benchmark, record, config).random_ids == plan.random_ids
    assert len(plan.random_ids) == 3 and len(plan.retain_ids) == 2
    assert not set(plan.random_ids) & set(plan.retain_ids)
    assert record.id not in plan.random_ids + plan.retain_ids
    names = [p.name for p in plan.generations]
    assert names[0] == "fact"
    assert {f"neighbour_image/{t}" for t in record.neighbour_images} <= set(names)
    assert len([n for n in names if n.startswith("neighbour_question/")]) == len(record.neighbour_questions)


def test_relearning_data_never_contains_the_deleted_answer(micro_benchmark):
    for record in micro_benchmark.records:
        rows = relearn_rows(micro_benchmark, record)
        assert rows and all(r.answer not in record.accepted_answers for r in rows)


def test_run_fact_rows_and_exact_restore(micro_adapter, micro_benchmark):
    defenses = {n: get_defense(n) for n in ("fact_erasure", "error_injection")}
    attacks = {"hp": get_attack("hp", k=2), "question_paraphrase": get_attack("question_paraphrase", n_samples=2)}
    config = ProtocolConfig(n_random=2, n_retain=1, empty_answer="i cannot help with that .")
    before = _state(micro_adapter.model)
    with Editor(micro_adapter, EditConfig(lr=0.05, steps=3)) as editor:
        relearn = Relearning(micro_adapter, RelearnConfig(steps=2))
        protocol = Protocol(micro_adapter, micro_benchmark, editor, defenses, attacks, config, relearn)
        rows = protocol.run_fact(micro_benchmark.records[0])
        # the model after a fact is the model before it: a second run gives the same pre rows
        again = protocol.run_fact(micro_benchmark.records[0])
    after = _state(micro_adapter.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    measures = [r for r in rows if r["type"] == "measure"]
    assert [m["defense"] for m in measures] == ["none", "fact_erasure", "error_injection"]
    assert all(len(m["edit"]["losses"]) == 3 for m in measures[1:])
    attack_rows = [(r["defense"], r["attack"]) for r in rows if r["type"] == "attack"]
    assert attack_rows == [(d, a) for d in ("none", "fact_erasure", "error_injection")
                           for a in ("hp", "question_paraphrase", "relearning")]
    assert rows[0] == again[0]
    for key in ("rewrite/answer", "rewrite/alt", "rewrite/empty", "paraphrase/answer", "neighbour/0"):
        assert key in measures[0]["logprob"]


def test_run_group_matches_run_fact_with_batched_edits(micro_adapter, micro_benchmark):
    from mmunlearn.defenses.batched_editor import BatchedEditor, lora_init

    defenses = {n: get_defense(n) for n in ("fact_erasure", "error_injection")}
    attacks = {"hp": get_attack("hp", k=2), "probe": get_attack("probe", k=2, n_train=4),
               "question_paraphrase": get_attack("question_paraphrase", n_samples=2),
               "multimodal": get_attack("multimodal", n_samples=2, n_paraphrases=1)}
    config = ProtocolConfig(n_random=2, n_retain=1, empty_answer="i cannot help with that .")
    records = micro_benchmark.records[:3]
    edit = EditConfig(lr=0.05, steps=3)
    with Editor(micro_adapter, edit) as editor:
        init = lora_init(editor)
        protocol = Protocol(micro_adapter, micro_benchmark, editor, defenses, attacks, config,
                            Relearning(micro_adapter, RelearnConfig(steps=2)))
        protocol.prime()
        sequential = [protocol.run_fact(r) for r in records]
    with BatchedEditor(micro_adapter, edit, slots=3, init=init) as batched:
        protocol = Protocol(micro_adapter, micro_benchmark, None, defenses, attacks, config,
                            Relearning(micro_adapter, RelearnConfig(steps=2), router=batched.router))
        protocol.prime()
        grouped = protocol.run_group(records, batched)
    for seq_rows, grp_rows in zip(sequential, grouped):
        assert [(r["type"], r["defense"], r.get("attack")) for r in seq_rows] == \
            [(r["type"], r["defense"], r.get("attack")) for r in grp_rows]
        for a, b in zip(seq_rows, grp_rows):
            if a["type"] == "measure":
                assert a["answers"] == b["answers"] and a["correct"] == b["correct"]
                assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-3)
            else:
                assert a["success"] == b["success"] and a["candidates"] == b["candidates"], a["attack"]


def test_probe_states_resume_below_the_edit_with_the_same_outcomes(micro_adapter, micro_benchmark, monkeypatch):
    from mmunlearn.defenses.batched_editor import BatchedEditor
    from mmunlearn.defenses.editor import lowest_layer

    defenses = {"fact_erasure": get_defense("fact_erasure")}
    attacks = {"probe": get_attack("probe", k=2, n_train=5)}
    config = ProtocolConfig(n_random=2, n_retain=1, empty_answer="i cannot help with that .")
    records = micro_benchmark.records[:3]
    edit = EditConfig(lr=0.05, steps=3, layers=[1])
    calls: list[bool] = []
    plain = micro_adapter.hidden_states

    def spy(items, resume=None):
        calls.append(resume is not None)
        return plain(items, resume=resume)

    monkeypatch.setattr(micro_adapter, "hidden_states", spy)
    runs = []
    with BatchedEditor(micro_adapter, edit, slots=3) as batched:
        assert lowest_layer(micro_adapter, batched.module_names) == 1
        for edited_from in (None, 1):
            calls.clear()
            protocol = Protocol(micro_adapter, micro_benchmark, None, defenses, attacks, config,
                                edited_from=edited_from)
            protocol.prime()
            runs.append(protocol.run_group(records, batched))
            assert calls[-1] is (edited_from is not None), "the edited model's probe states resume at the edit"
    for plain_rows, resumed_rows in zip(*runs):
        for a, b in zip(plain_rows, resumed_rows):
            if a["type"] == "attack":
                assert a["success"] == b["success"] and a["candidates"] == b["candidates"]
