"""The editor edits what it is told, lowers each defense's loss, and restores the model bit for bit."""

from __future__ import annotations

import pytest
import torch

from mmunlearn.defenses import EditConfig, EditExamples, Editor, forward_terms, get_defense
from mmunlearn.errors import ConfigError
from mmunlearn.models.adapters.base import VLMInput

LENS_LAYERS = [1, 2]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fact(micro_benchmark, target: str | None = None) -> list[VLMInput]:
    r = micro_benchmark.records[0]
    return [VLMInput(micro_benchmark.image(r.image), r.question, target or r.answer)]


def test_lora_targets_one_mid_depth_down_projection_with_rank_one(micro_adapter):
    with Editor(micro_adapter, EditConfig()) as editor:
        assert editor.module_names == ["model.language_model.layers.0.mlp.down_proj"]  # unlok_edit of 2 layers
        hidden = micro_adapter.text_config.hidden_size
        inter = micro_adapter.text_config.intermediate_size
        assert editor.trainable_count() == inter + hidden  # A: 1 x inter, B: hidden x 1
    assert not any("lora_" in n for n, _ in micro_adapter.model.named_parameters())


@pytest.mark.parametrize("name", ["fact_erasure", "error_injection", "empty_response", "head_projection",
                                  "max_entropy", "npo", "gradient_ascent"])
def test_each_defense_lowers_its_loss_and_restore_is_exact(micro_adapter, micro_benchmark, name):
    params = {"k": 80} if name == "head_projection" else {}  # k near half the vocab: the hinge is active
    defense = get_defense(name, **params)
    record = micro_benchmark.records[0]
    target = {"answer": record.answer, "alt": record.alt_answer, "empty": "i cannot help with that ."}
    items = _fact(micro_benchmark, target[defense.target])
    before_state = _state(micro_adapter.model)
    before = forward_terms(micro_adapter, items, None).target_logprob
    with Editor(micro_adapter, EditConfig(lr=0.05, steps=8)) as editor:
        log = editor.edit(defense, EditExamples(items), LENS_LAYERS)
        assert len(log.losses) == 8
        assert log.losses[-1] < log.losses[0]
        editor.restore()
        assert torch.equal(forward_terms(micro_adapter, items, None).target_logprob, before)
    after_state = _state(micro_adapter.model)
    assert before_state.keys() == after_state.keys()
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state)


def test_fact_erasure_lowers_the_answer_probability(micro_adapter, micro_benchmark):
    items = _fact(micro_benchmark)
    before = forward_terms(micro_adapter, items, None).target_logprob.item()
    with Editor(micro_adapter, EditConfig(lr=0.1, steps=10)) as editor:
        with editor.edited(get_defense("fact_erasure"), EditExamples(items)):
            during = forward_terms(micro_adapter, items, None).target_logprob.item()
        after = forward_terms(micro_adapter, items, None).target_logprob.item()
    assert during < before - 0.1
    assert after == before


def test_full_weight_edits_restore_from_a_snapshot(micro_adapter, micro_benchmark):
    items = _fact(micro_benchmark)
    before_state = _state(micro_adapter.model)
    config = EditConfig(method="full", modules=("down", "o"), layers="all", lr=0.01, steps=3)
    with Editor(micro_adapter, config) as editor:
        assert len(editor.module_names) == 2 * micro_adapter.num_layers
        editor.edit(get_defense("gradient_ascent"), EditExamples(items))
        changed = _state(micro_adapter.model)
        assert any(not torch.equal(changed[k], before_state[k]) for k in before_state)
        editor.restore()
    after = _state(micro_adapter.model)
    assert all(torch.equal(before_state[k], after[k]) for k in before_state)


def test_retain_term_is_used_by_grad_diff(micro_adapter, micro_benchmark):
    forget = _fact(micro_benchmark)
    other = micro_benchmark.records[1]
    retain = [VLMInput(micro_benchmark.image(other.image), other.question, other.answer)]
    with Editor(micro_adapter, EditConfig(lr=0.05, steps=2)) as editor:
        with_retain = editor.edit(get_defense("grad_diff"), EditExamples(forget, retain)).losses[0]
        editor.restore()
        without = editor.edit(get_defense("grad_diff"), EditExamples(forget)).losses[0]
        editor.restore()
    assert with_retain > without  # the retain NLL is added on top of the forget term


def test_restore_check_catches_a_changed_base_weight(micro_adapter):
    from mmunlearn.errors import MMUnlearnError

    with Editor(micro_adapter, EditConfig()) as editor:
        with torch.no_grad():
            micro_adapter.model.get_submodule(editor.module_names[0]).base_layer.weight.add_(1.0)
        with pytest.raises(MMUnlearnError, match="restore check failed"):
            editor.restore()


@pytest.mark.parametrize("config, match", [
    (dict(method="qlora"), "edit.method"),
    (dict(modules=("gate",)), "edit.modules"),
    (dict(steps=0), "edit.steps"),
    (dict(lr=0.0), "edit.lr"),
])
def test_bad_edit_configs_are_one_line_errors(config, match):
    with pytest.raises(ConfigError, match=match) as exc:
        EditConfig(**config)
    assert "\n" not in str(exc.value)


def test_layer_out_of_range_is_a_config_error(micro_adapter):
    with pytest.raises(ConfigError, match="edit.layers"):
        Editor(micro_adapter, EditConfig(layers=(7,)))


@pytest.mark.parametrize("name, lens", [("fact_erasure", None), ("head_projection", [1, 2]), ("grad_diff", None),
                                        ("head_projection", [0, 1, 2])])
def test_edits_run_from_the_edited_layer_equal_whole_forward_edits(micro_adapter, micro_benchmark, name, lens):
    """Layer 1 of the micro model's 2 edited from the stored layer-1 inputs: the same losses and edit; with a
    logit-lens layer below the edited one the forward runs whole."""
    from mmunlearn.defenses.editor import run_from

    defense = get_defense(name, **({"k": 80} if name == "head_projection" else {}))
    record, other = micro_benchmark.records[:2]
    examples = EditExamples(_fact(micro_benchmark), [VLMInput(micro_benchmark.image(other.image), other.question,
                                                              other.answer)])
    results = []
    for resume in (False, True):
        config = EditConfig(lr=0.05, steps=4, layers=(1,), from_edited_layer=resume)
        with Editor(micro_adapter, config) as editor:
            batch = micro_adapter.format(examples.forget, for_generation=False)
            assert (run_from(micro_adapter, batch, config, editor.module_names, lens).layer == 1) == \
                (resume and (lens is None or min(lens) >= 1))
            log = editor.edit(defense, examples, lens)
            results.append((log.losses, [p.detach().clone() for p in editor.trainable]))
    (whole_losses, whole_params), (losses, params) = results
    assert losses == pytest.approx(whole_losses, rel=1e-5, abs=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(params, whole_params))


def test_forward_terms_are_the_per_row_sums_of_answer_log_probs(micro_adapter, micro_benchmark):
    """One gather over the answer positions (and logits computed only there) gives each row's summed target
    log-probs, end of turn excluded, and their gradient."""
    records = micro_benchmark.records[:4]
    answers = [records[0].answer, f"{records[1].answer} {records[2].answer}", records[2].answer,
               f"{records[3].answer} {records[0].answer} {records[1].answer}"]
    items = [VLMInput(micro_benchmark.image(r.image), r.question, a) for r, a in zip(records, answers)]
    batch = micro_adapter.format(items, for_generation=False)
    kept, offset = micro_adapter.answer_logits(batch)
    width = batch.inputs["input_ids"].shape[1]
    assert 0 < kept["logits_to_keep"] < width and offset == width - kept["logits_to_keep"]
    head = micro_adapter.model.get_output_embeddings().weight
    last_down = micro_adapter.model.get_submodule(micro_adapter.module_names().mlp_down[-1]).weight
    widths: list[int] = []  # the last layer's MLP runs at the kept positions alone
    hook = micro_adapter.model.get_submodule(micro_adapter.module_names().mlp_down[-1]).register_forward_pre_hook(
        lambda module, args: widths.append(int(args[0].shape[1])))
    try:
        terms = forward_terms(micro_adapter, batch, None)
    finally:
        hook.remove()
    assert widths == [kept["logits_to_keep"]]
    fast, fast_down = torch.autograd.grad(terms.target_logprob.sum(), [head, last_down])
    logits = micro_adapter.model(**batch.model_inputs()).logits.float()
    ids, stops = batch.inputs["input_ids"], set(micro_adapter.stop_token_ids)
    hand = []
    for b, (start, end) in enumerate(batch.answer_spans):
        target = ids[b, start:end].tolist()
        target = target[:-1] if len(target) > 1 and target[-1] in stops else target
        hand.append(sum(logits[b, start - 1 + k].log_softmax(-1)[t] for k, t in enumerate(target)))
        assert int(terms.target_token[b]) == target[0]
    assert len({len(a.split()) for a in answers}) == 3
    assert torch.allclose(terms.target_logprob, torch.stack(hand), atol=1e-5)
    slow, slow_down = torch.autograd.grad(torch.stack(hand).sum(), [head, last_down])
    assert torch.allclose(fast, slow, atol=1e-5) and torch.allclose(fast_down, slow_down, atol=1e-5)


@pytest.mark.parametrize("config", [EditConfig(lr=0.1, steps=5, rank=2, alpha=4.0, modules=("q", "down"), layers="all"),
                                    EditConfig(method="full", lr=0.01, steps=3)])
def test_save_merged_writes_the_edited_model_as_a_plain_checkpoint(micro_adapter, micro_benchmark, tmp_path, config):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    items = _fact(micro_benchmark)
    with Editor(micro_adapter, config) as editor:
        with editor.edited(get_defense("fact_erasure"), EditExamples(items)):
            edited = forward_terms(micro_adapter, items, None).target_logprob
            editor.save_merged(tmp_path / "model")
        original = forward_terms(micro_adapter, items, None).target_logprob
    assert not torch.allclose(edited, original)  # the edit changed the answer's probability
    saved = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert "model.safetensors" in saved and not any(n.endswith((".bin", ".tmp")) for n in saved)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "model")
    assert not any("lora_" in n or "base_layer" in n for n, _ in model.named_parameters())
    AutoProcessor.from_pretrained(tmp_path / "model")
    original_model = micro_adapter.model
    micro_adapter.model = model
    try:
        reloaded = forward_terms(micro_adapter, items, None).target_logprob
    finally:
        micro_adapter.model = original_model
    torch.testing.assert_close(reloaded, edited, rtol=1e-5, atol=1e-5)
