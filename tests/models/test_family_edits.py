"""The edit machinery on every family's tiny model: batched per-fact edits equal sequential ones and restore."""

from __future__ import annotations

import pytest
import torch
from vlm_fixtures import BUILDERS, make_items

from mmunlearn.defenses import EditConfig, EditExamples, Editor, forward_terms, get_defense
from mmunlearn.defenses.batched_editor import BatchedEditor, lora_init

ITEMS = make_items()


@pytest.mark.parametrize("defense_name", ["fact_erasure", "max_entropy"])
@pytest.mark.parametrize("family", list(BUILDERS))
def test_batched_edits_equal_sequential_edits_on_every_family(family, defense_name, adapter_for):
    """Two image facts edited at decoder layer 1 (resumed there where the family can), one at a time and together
    in two slots: the same losses, answer log-probs and greedy answers per fact, and the weights restored."""
    adapter = adapter_for(family)
    # Mllama's layer 1 is a cross-attention layer, whose MLP output is gated by tanh(0) = 0 in a random model.
    config = EditConfig(lr=0.05, steps=3, layers=(2 if family == "mllama" else 1,))
    defense = get_defense(defense_name)
    examples = [EditExamples([item]) for item in (ITEMS[0], ITEMS[2])]
    lens_layers = [1, adapter.num_layers]
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    sequential = []
    with Editor(adapter, config) as editor:
        init = lora_init(editor)
        for ex in examples:
            log = editor.edit(defense, ex, lens_layers)
            sequential.append((log.losses, forward_terms(adapter, ex.forget, None).target_logprob.detach(),
                               adapter.generate(ex.forget, max_new_tokens=3)))
            editor.restore()
    assert all(losses[-1] < losses[0] for losses, _, _ in sequential), "each edit lowers its loss"
    with BatchedEditor(adapter, config, slots=2, init=init) as batched:
        logs = batched.edit_many(defense, examples, lens_layers)
        for i, ex in enumerate(examples):
            with batched.slot(i):
                logprob = forward_terms(adapter, ex.forget, None).target_logprob.detach()
                text = adapter.generate(ex.forget, max_new_tokens=3)
            losses, seq_logprob, seq_text = sequential[i]
            assert logs[i].losses == pytest.approx(losses, rel=1e-4, abs=1e-5)
            assert torch.allclose(logprob, seq_logprob, atol=1e-4)
            assert text == seq_text
        batched.restore()
    after = adapter.model.state_dict()
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
