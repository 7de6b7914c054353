"""Batched independent edits equal sequential edits fact by fact, and restore the original model."""

from __future__ import annotations

import contextlib

import pytest
import torch

from mmunlearn.defenses import EditConfig, EditExamples, Editor, forward_terms, get_defense
from mmunlearn.defenses.batched_editor import BatchedEditor, lora_init
from mmunlearn.errors import ConfigError
from mmunlearn.models.adapters.base import VLMInput

CONFIG = EditConfig(lr=0.05, steps=4, layers=(1,))


def _examples(bench, n: int, prefixes: tuple[str, ...] = ("",)) -> list[EditExamples]:
    out = []
    for r in bench.records[:n]:
        image = bench.image(r.image)
        out.append(EditExamples([VLMInput(image, p + r.question, r.answer) for p in prefixes]))
    return out


@pytest.mark.parametrize("name, prefixes", [("fact_erasure", ("",)), ("error_injection", ("",)),
                                            ("head_projection", ("",)), ("input_rephrasing", ("", "a . "))])
def test_each_fact_equals_its_sequential_edit(micro_adapter, micro_benchmark, name, prefixes):
    params = {"k": 80} if name == "head_projection" else {"prefixes": prefixes} if name == "input_rephrasing" else {}
    defense = get_defense(name, **params)
    examples = _examples(micro_benchmark, 3, prefixes)
    if defense.target == "alt":
        examples = [EditExamples([VLMInput(r.image, r.question, "owls") for r in ex.forget]) for ex in examples]
    before = {k: v.clone() for k, v in micro_adapter.model.state_dict().items()}
    sequential = []
    with Editor(micro_adapter, CONFIG) as editor:
        init = lora_init(editor)
        for ex in examples:
            log = editor.edit(defense, ex, [1, 2])
            sequential.append((log.losses, forward_terms(micro_adapter, ex.forget, None).target_logprob.detach(),
                               micro_adapter.generate(ex.forget[:1], max_new_tokens=3)))
            editor.restore()
    with BatchedEditor(micro_adapter, CONFIG, slots=3, init=init) as batched:
        logs = batched.edit_many(defense, examples, [1, 2])
        for i, ex in enumerate(examples):
            with batched.slot(i):
                logprob = forward_terms(micro_adapter, ex.forget, None).target_logprob.detach()
                text = micro_adapter.generate(ex.forget[:1], max_new_tokens=3)
            seq_losses, seq_logprob, seq_text = sequential[i]
            assert logs[i].losses == pytest.approx(seq_losses, rel=1e-4, abs=1e-5)
            assert torch.allclose(logprob, seq_logprob, atol=1e-4)
            assert text == seq_text
        batched.restore()
        assert all(torch.equal(m.B, torch.zeros_like(m.B)) for m in batched.modules)
    after = micro_adapter.model.state_dict()
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)


def test_slot_rows_must_match_the_batch(micro_adapter, micro_benchmark):
    from mmunlearn.errors import MMUnlearnError

    ex = _examples(micro_benchmark, 2)
    with BatchedEditor(micro_adapter, CONFIG, slots=2) as batched:
        batched._set_rows(torch.tensor([0, 1, 0]))
        with pytest.raises(MMUnlearnError, match="do not match"):
            forward_terms(micro_adapter, ex[0].forget + ex[1].forget, None)
        batched._set_rows(None)


def test_routed_calls_take_each_item_through_its_own_facts_delta(micro_adapter, micro_benchmark):
    defense = get_defense("fact_erasure")
    examples = _examples(micro_benchmark, 3)
    items = [VLMInput(r.image, r.question) for ex in examples for r in ex.forget] * 2
    scored = [VLMInput(r.image, r.question, r.answer) for ex in examples for r in ex.forget] * 2
    owners = [0, 1, 2, -1, 2, 0]  # any order, and -1 for the unedited model
    micro_adapter.batch_size = 4  # routing must follow the adapter's own batch boundaries
    with BatchedEditor(micro_adapter, CONFIG, slots=3) as batched:
        batched.edit_many(defense, examples)
        with batched.routed(owners):
            texts = micro_adapter.generate(items, max_new_tokens=3)
            scores = micro_adapter.answer_logprobs(scored)
            states = micro_adapter.hidden_states(items)
            samples = micro_adapter.sample(items, [[7, 8, 9]] * len(items), max_new_tokens=3, temperature=2.0)
        for k, owner in enumerate(owners):
            with contextlib.nullcontext() if owner < 0 else batched.slot(owner):
                assert micro_adapter.generate(items[k:k + 1], max_new_tokens=3) == texts[k:k + 1]
                assert micro_adapter.sample(items[k:k + 1], [[7, 8, 9]], max_new_tokens=3,
                                            temperature=2.0) == samples[k:k + 1]
                assert micro_adapter.answer_logprobs(scored[k:k + 1])[0].total == pytest.approx(scores[k].total,
                                                                                                abs=1e-4)
                assert torch.allclose(micro_adapter.hidden_states(items[k:k + 1])[0], states[k], atol=1e-4)
        assert batched.router.rows is None
        assert abs(scores[0].total - scores[3].total) > 1e-3, "the same item edited (owner 0) and not (-1)"
        with pytest.raises(ConfigError, match="owners"):
            with batched.routed([0, 3]):
                pass


def test_rows_dropped_when_they_stop_keep_their_own_facts_delta(micro_adapter, micro_benchmark):
    """Decoding drops finished rows; the routing follows the rows that are left."""
    from decoding_support import STEPS, batch_sizes, stop_between, stopping_at

    examples = _examples(micro_benchmark, 3)
    items = [VLMInput(r.image, r.question) for ex in examples for r in ex.forget] * 2
    owners = [0, 1, 2, -1, 2, 0]
    with BatchedEditor(micro_adapter, CONFIG, slots=3) as batched:
        batched.edit_many(get_defense("fact_erasure"), examples)
        with batched.routed(owners):
            free = micro_adapter.generate(items, max_new_tokens=STEPS)
        tokens = [micro_adapter.tokenizer(t, add_special_tokens=False)["input_ids"] for t in free]
        stops = stop_between(micro_adapter, tokens)
        with stopping_at(micro_adapter, stops):
            with batched.routed(owners), batch_sizes(micro_adapter) as sizes:
                texts = micro_adapter.generate(items, max_new_tokens=STEPS)
            alone = []
            for k, owner in enumerate(owners):
                with contextlib.nullcontext() if owner < 0 else batched.slot(owner):
                    alone += micro_adapter.generate(items[k:k + 1], max_new_tokens=STEPS)
    assert texts == alone
    assert min(sizes) < len(items), sizes
