"""Every family adapter against its own tiny random model: formatting, scores, probes, generation, accounting."""

from __future__ import annotations

import re

import pytest
import torch
from vlm_fixtures import BUILDERS, make_items

from mmunlearn.errors import ConfigError, MMUnlearnError
from mmunlearn.models.adapters import VLMAdapter, VLMInput
from mmunlearn.models.adapters.gemma3 import Gemma3Adapter
from mmunlearn.models.adapters.idefics3 import Idefics3Adapter, SmolVLMAdapter
from mmunlearn.models.adapters.internvl import InternVLAdapter
from mmunlearn.models.adapters.llava import LlavaAdapter
from mmunlearn.models.adapters.llava_next import LlavaNextAdapter
from mmunlearn.models.adapters.llava_onevision import LlavaOnevisionAdapter
from mmunlearn.models.adapters.mllama import MllamaAdapter
from mmunlearn.models.adapters.paligemma import PaliGemmaAdapter
from mmunlearn.models.adapters.qwen2_vl import Qwen2VLAdapter, Qwen25VLAdapter
from mmunlearn.models.adapters.qwen3_vl import Qwen3VLAdapter

FAMILIES = list(BUILDERS)
EXPECTED_CLASS = {"llava_tiny": LlavaAdapter, "llava15": LlavaAdapter, "llava_next": LlavaNextAdapter,
                  "qwen2_vl": Qwen2VLAdapter, "qwen2_5_vl": Qwen25VLAdapter, "qwen3_vl": Qwen3VLAdapter,
                  "idefics3": Idefics3Adapter, "smolvlm": SmolVLMAdapter,
                  "mllama": MllamaAdapter, "gemma3": Gemma3Adapter,
                  "llava_onevision": LlavaOnevisionAdapter, "internvl": InternVLAdapter,
                  "paligemma": PaliGemmaAdapter}
ITEMS = make_items()


def groups(adapter: VLMAdapter, items: list[VLMInput]) -> list[list[VLMInput]]:
    """The batches a caller may format directly: all items, or one per modality where mixing is not allowed."""
    if adapter.can_mix_modalities:
        return [items]
    return [[it for it in items if it.image is not None], [it for it in items if it.image is None]]


@pytest.fixture(params=FAMILIES)
def adapter(request, adapter_for) -> VLMAdapter:
    return adapter_for(request.param)


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_the_family_adapter(family, adapter_for):
    adapter = adapter_for(family)
    assert type(adapter) is EXPECTED_CLASS[family]
    # Qwen2-VL, Qwen3-VL, SmolVLM, LLaVA-OneVision and InternVL processors need torchvision: those run the
    # manual (PIL + tokenizer) path.
    assert (adapter.processor is None) == (family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm",
                                                      "llava_onevision", "internvl"))


def test_format_round_trip(adapter):
    tok = adapter.tokenizer
    for items in groups(adapter, ITEMS):
        batch = adapter.format(items, for_generation=False)
        ids, mask, labels = batch.inputs["input_ids"], batch.inputs["attention_mask"], batch.inputs["labels"]
        assert torch.all(mask[:, 1:] >= mask[:, :-1]), "left padding"
        for b, item in enumerate(items):
            row = ids[b][mask[b].bool()].tolist()
            assert item.question in tok.decode(row, skip_special_tokens=True)
            answer_ids = labels[b][labels[b] != -100].tolist()
            assert tok.decode(answer_ids, skip_special_tokens=True).strip() == item.answer
            assert answer_ids[-1] in adapter.stop_token_ids, "the end-of-turn token is a target"
            start, end = batch.answer_spans[b]
            assert ids[b, start:end].tolist() == answer_ids and end == ids.shape[1]
            n_image = sum(t == adapter.image_token_id for t in row)
            if adapter.expands_image_tokens:
                assert (n_image > 0) == (item.image is not None)
            else:
                assert n_image == (1 if item.image is not None else 0)
        assert ("pixel_values" in batch.inputs) == any(it.image is not None for it in items)
        gen = adapter.format(items, for_generation=True)
        assert "labels" not in gen.inputs
        for b in range(len(items)):
            prompt = gen.inputs["input_ids"][b][gen.inputs["attention_mask"][b].bool()].tolist()
            full = ids[b][mask[b].bool()].tolist()
            assert full[:len(prompt)] == prompt, "teacher forcing extends the generation prompt"


def test_text_only_batch_has_no_vision_inputs(adapter):
    batch = adapter.format([it for it in ITEMS if it.image is None], for_generation=True)
    # Inputs the family derives from the ids are text-side (PaliGemma's prefix-LM token types).
    text_side = set(adapter._inputs_from_ids(batch.inputs["input_ids"]))
    assert set(batch.inputs) <= {"input_ids", "attention_mask", "mm_token_type_ids"} | text_side
    assert not (batch.inputs["input_ids"] == adapter.image_token_id).any()


def test_answer_logprobs_equal_hand_computation(adapter):
    scores = adapter.answer_logprobs(ITEMS)
    by_question = {it.question + str(it.image is None): s for it, s in zip(ITEMS, scores)}
    for items in groups(adapter, ITEMS):
        batch = adapter.format(items, for_generation=False)
        with torch.no_grad():
            logits = adapter.model(**batch.model_inputs()).logits.float()
        ids, labels = batch.inputs["input_ids"], batch.inputs["labels"]
        for b, item in enumerate(items):
            positions = (labels[b] != -100).nonzero()[:, 0]
            hand = torch.stack([logits[b, p - 1].log_softmax(-1)[ids[b, p]] for p in positions])
            score = by_question[item.question + str(item.image is None)]
            assert score.token_ids == ids[b, positions].tolist()
            assert torch.allclose(torch.tensor(score.logprobs), hand, atol=1e-5)
            assert score.total == pytest.approx(float(hand.sum()), abs=1e-4)


def test_hidden_states_and_logit_lens(adapter):
    n_layers = adapter.text_config.num_hidden_layers
    hidden = adapter.hidden_states(ITEMS)
    lens = adapter.logit_lens(ITEMS)
    assert hidden.shape == (len(ITEMS), n_layers + 1, adapter.text_config.hidden_size)
    vocab = adapter.model.get_output_embeddings().weight.shape[0]
    assert lens.shape == (len(ITEMS), n_layers + 1, vocab)
    assert torch.allclose(lens.exp().sum(-1), torch.ones(len(ITEMS), n_layers + 1), atol=1e-4)
    position = {id(it): i for i, it in enumerate(ITEMS)}
    for items in groups(adapter, ITEMS):
        batch = adapter.format(items, for_generation=True)
        with torch.no_grad():
            out = adapter.model(**batch.model_inputs(), output_hidden_states=True)
        final = out.logits[:, -1].float().log_softmax(-1)
        rows = [position[id(it)] for it in items]
        assert torch.allclose(lens[rows, -1], final, atol=1e-5), "last lens layer = the model's own output"
        assert torch.allclose(hidden[rows, 0], out.hidden_states[0][:, -1].float(), atol=1e-6)


def test_last_position_reads_run_the_last_layers_mlp_there_alone(adapter):
    """Hidden states, the logit lens and the next token read only the last position: the last layer's MLP
    runs on it alone, and every layer's last-position state is the whole forward's."""
    down = adapter.model.get_submodule(adapter.module_names().mlp_down[-1])
    widths: list[int] = []
    handle = down.register_forward_pre_hook(lambda module, args: widths.append(int(args[0].shape[1])))
    try:
        hidden = adapter.hidden_states(ITEMS)
    finally:
        handle.remove()
    assert widths and set(widths) == {1}, widths
    position = {id(it): i for i, it in enumerate(ITEMS)}
    for items in groups(adapter, ITEMS):
        batch = adapter.format(items, for_generation=True)
        with torch.no_grad():
            out = adapter.model(**batch.model_inputs(), output_hidden_states=True)
        whole = torch.stack(adapter._complete_hidden_states(list(out.hidden_states)), dim=1)[:, :, -1].float()
        assert torch.allclose(hidden[[position[id(it)] for it in items]], whole, atol=1e-5)


def test_greedy_generation_equals_model_generate(adapter):
    texts = adapter.generate(ITEMS, max_new_tokens=5)
    expected: dict[int, str] = {}
    stops = set(adapter.stop_token_ids)
    for items in groups(adapter, ITEMS):
        batch = adapter.format(items, for_generation=True)
        with torch.no_grad():
            out = adapter.model.generate(**batch.model_inputs(), max_new_tokens=5, do_sample=False,
                                         eos_token_id=adapter.stop_token_ids, pad_token_id=adapter.pad_token_id)
        width = batch.inputs["input_ids"].shape[1]
        for b, item in enumerate(items):
            new = out[b, width:].tolist()
            cut = next((k for k, t in enumerate(new) if t in stops), len(new))
            expected[id(item)] = adapter.tokenizer.decode(new[:cut], skip_special_tokens=True).strip()
    assert texts == [expected[id(it)] for it in ITEMS]


def test_seeded_sampling_is_reproducible(adapter):
    items = ITEMS[:2]
    first = adapter.generate(items, max_new_tokens=4, do_sample=True, seed=7, temperature=1.5)
    state = torch.get_rng_state()
    again = adapter.generate(items, max_new_tokens=4, do_sample=True, seed=7, temperature=1.5)
    assert first == again
    assert torch.equal(state, torch.get_rng_state()), "seeded calls leave the global RNG alone"


def test_token_accounting(adapter):
    counts = adapter.token_counts(ITEMS)
    for item, count in zip(ITEMS, counts):
        row = adapter.encode(item, for_generation=False)
        assert count.total == len(row.input_ids)
        if item.image is None:
            assert count.image == 0 and count.vision_positions == 0
        else:
            assert count.vision_positions > 0
            assert (count.image > 0) == adapter.expands_image_tokens
    flops = adapter.flops(ITEMS, backward=False)
    train = adapter.flops(ITEMS, backward=True)
    for item, f, t in zip(ITEMS, flops, train):
        assert f.language > 0 and t.language == pytest.approx(3 * f.language)
        assert (f.vision > 0) == (item.image is not None)


def test_module_names_and_lora_regex(adapter):
    names = adapter.module_names()
    modules = dict(adapter.model.named_modules())
    assert len(names.layers) == adapter.text_config.num_hidden_layers
    assert all(name in modules for name in names.layers + names.mlp_down)
    assert all(set(attn) == {"q", "k", "v", "o"} for attn in names.attention)
    for path in (names.vision_tower, names.projector, names.final_norm, names.lm_head, names.embed_tokens):
        assert path in modules
    regex = names.lora_target_regex(("q", "v", "down"))
    matched = [n for n in modules if re.fullmatch(regex, n)]
    assert len(matched) == 3 * len(names.layers)
    assert not any(n.startswith(names.vision_tower) for n in matched)


def test_freeze_vision(model_dir):
    from mmunlearn.models.adapters import load_adapter

    adapter = load_adapter(model_dir("llava_next"))
    before = adapter.flops(ITEMS[:1], backward=True)[0]
    frozen = adapter.freeze_vision()
    assert frozen > 0
    tower = adapter.model.get_submodule(adapter.module_names().vision_tower)
    assert not any(p.requires_grad for p in tower.parameters())
    assert any(p.requires_grad for p in adapter.model.get_submodule(adapter.module_names().projector).parameters())
    after = adapter.flops(ITEMS[:1], backward=True)[0]
    assert after.vision < before.vision and after.language == before.language


def test_qwen_freeze_keeps_nested_merger_trainable(model_dir):
    from mmunlearn.models.adapters import load_adapter

    adapter = load_adapter(model_dir("qwen2_vl"))
    adapter.freeze_vision()
    assert all(p.requires_grad for p in adapter.model.model.visual.merger.parameters())
    assert not any(p.requires_grad for p in adapter.model.model.visual.blocks.parameters())


@pytest.mark.parametrize("family", ["llava_tiny", "llava15", "llava_next", "idefics3", "mllama", "gemma3",
                                    "paligemma"])
def test_manual_path_equals_processor_path(family, adapter_for):
    """Rows built from tokenizer + PIL image processor match the processor's (what Qwen2-VL/SmolVLM rely on)."""
    full = adapter_for(family)
    manual = type(full)(full.model, None, tokenizer=full.tokenizer, image_processor=full.image_processor,
                        chat_template=full.processor.chat_template)
    for item in ITEMS:
        a, b = full.encode(item, for_generation=False), manual.encode(item, for_generation=False)
        assert a.input_ids == b.input_ids and a.answer_start == b.answer_start
        for key in ("pixel_values", "image_sizes", "pixel_attention_mask", "aspect_ratio_ids"):
            if key in a.vision:
                assert torch.equal(torch.as_tensor(a.vision[key]), torch.as_tensor(b.vision[key]))


def test_smolvlm_manual_rows_match_idefics3_processor(adapter_for):
    smol, idefics = adapter_for("smolvlm"), adapter_for("idefics3")
    for item in ITEMS:
        assert smol.encode(item, for_generation=False).input_ids == idefics.encode(item, False).input_ids


def test_mixed_batch_splits_for_non_mixing_family(adapter_for):
    adapter = adapter_for("mllama")
    with pytest.raises(Exception, match="cannot mix"):
        adapter.format(ITEMS, for_generation=True)
    assert len(adapter.answer_logprobs(ITEMS)) == len(ITEMS)


def test_batching_does_not_change_scores(adapter):
    """Mixed, left-padded batches give each row what it gets alone: pixel values reach the right rows."""
    batched = adapter.answer_logprobs(ITEMS)
    adapter.batch_size, saved = 1, adapter.batch_size
    try:
        alone = adapter.answer_logprobs(ITEMS)
        alone_lens = adapter.logit_lens(ITEMS)
    finally:
        adapter.batch_size = saved
    for a, b in zip(batched, alone):
        assert a.token_ids == b.token_ids
        assert a.total == pytest.approx(b.total, abs=1e-4)
    assert torch.allclose(adapter.logit_lens(ITEMS), alone_lens, atol=1e-4)


@pytest.mark.parametrize("family", ["llava_tiny", "llava15", "llava_next", "idefics3", "mllama", "gemma3"])
def test_generation_prompt_equals_processor_chat_template(family, adapter_for):
    """One row of `format` is what `processor.apply_chat_template(tokenize=True)` gives for that conversation."""
    adapter = adapter_for(family)
    for item in ITEMS[:2]:
        content = ([{"type": "image", "image": item.image}] if item.image is not None else [])
        content.append({"type": "text", "text": item.question})
        expected = adapter.processor.apply_chat_template([{"role": "user", "content": content}],
                                                         add_generation_prompt=True, tokenize=True,
                                                         return_dict=True, return_tensors="pt")
        batch = adapter.format([item], for_generation=True)
        assert batch.inputs["input_ids"].tolist() == expected["input_ids"].tolist()
        if item.image is not None:
            assert torch.equal(batch.inputs["pixel_values"], expected["pixel_values"])


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_manual_path_equals_qwen2vl_processor(family, adapter_for):
    """The manual rows equal Qwen2VLProcessor's (built here without the video processor torchvision needs)."""
    from transformers import Qwen2VLProcessor

    manual = adapter_for(family)
    processor = object.__new__(Qwen2VLProcessor)
    processor.tokenizer, processor.image_processor = manual.tokenizer, manual.image_processor
    processor.chat_template = manual.chat_template
    processor.image_token, processor.video_token = "<|image_pad|>", "<|video_pad|>"
    processor.image_token_id = manual.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    processor.video_token_id = manual.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    real = type(manual)(manual.model, processor)
    for item in ITEMS:
        a, b = manual.encode(item, for_generation=False), real.encode(item, for_generation=False)
        assert a.input_ids == b.input_ids and a.answer_start == b.answer_start
        assert sorted(a.vision) == sorted(b.vision)
        assert all(torch.equal(a.vision[k], b.vision[k]) for k in a.vision)
    image_item = ITEMS[0]
    text = real.render(image_item, with_answer=False)
    expected = processor(text=[text], images=[image_item.image], return_tensors="pt")
    batch = manual.format([image_item], for_generation=True)
    assert torch.equal(batch.inputs["mm_token_type_ids"], expected["mm_token_type_ids"].long())


def test_qwen3_manual_path_equals_qwen3vl_processor(adapter_for):
    """Qwen3-VL's manual rows equal Qwen3VLProcessor's (built without the video processor torchvision needs)."""
    from transformers import Qwen3VLProcessor

    manual = adapter_for("qwen3_vl")
    tok = manual.tokenizer
    processor = object.__new__(Qwen3VLProcessor)
    processor.tokenizer, processor.image_processor = tok, manual.image_processor
    processor.chat_template = manual.chat_template
    for name in ("image", "video"):
        setattr(processor, f"{name}_token", f"<|{name}_pad|>")
        setattr(processor, f"{name}_token_id", tok.convert_tokens_to_ids(f"<|{name}_pad|>"))
    for name in ("start", "end"):
        setattr(processor, f"vision_{name}_token", f"<|vision_{name}|>")
        setattr(processor, f"vision_{name}_token_id", tok.convert_tokens_to_ids(f"<|vision_{name}|>"))
    real = Qwen3VLAdapter(manual.model, processor)
    for item in ITEMS:
        a, b = manual.encode(item, for_generation=False), real.encode(item, for_generation=False)
        assert a.input_ids == b.input_ids and a.answer_start == b.answer_start
        assert sorted(a.vision) == sorted(b.vision)
        assert all(torch.equal(a.vision[k], b.vision[k]) for k in a.vision)
    for item in ITEMS[:3]:
        content = ([{"type": "image", "image": item.image}] if item.image is not None else [])
        content.append({"type": "text", "text": item.question})
        expected = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                 tokenize=True, return_dict=True, return_tensors="pt")
        batch = manual.format([item], for_generation=True)
        assert batch.inputs["input_ids"].tolist() == expected["input_ids"].tolist()
        assert torch.equal(batch.inputs["mm_token_type_ids"], expected["mm_token_type_ids"].long())
        if item.image is not None:
            assert torch.equal(batch.inputs["pixel_values"], expected["pixel_values"])
            assert torch.equal(batch.inputs["image_grid_thw"], expected["image_grid_thw"])


def test_qwen3_deepstack_mergers_count_as_projector(adapter_for):
    """DeepStack mergers map vision features to the decoder once per image token, like the merger: projector."""
    adapter = adapter_for("qwen3_vl")
    visual = adapter.model.model.visual
    deepstack = {id(p) for p in visual.deepstack_merger_list.parameters()}
    assert deepstack and deepstack <= {id(p) for p in adapter._params(adapter.projector_path)}
    assert not deepstack & {id(p) for p in adapter._params(adapter.vision_tower_path, exclude=adapter.projector_path)}
    saved = {n: p.requires_grad for n, p in visual.named_parameters()}
    try:
        adapter.freeze_vision()
        assert all(p.requires_grad for p in visual.deepstack_merger_list.parameters())
        assert all(p.requires_grad for p in visual.merger.parameters())
        assert not any(p.requires_grad for p in visual.blocks.parameters())
    finally:
        for n, p in visual.named_parameters():
            p.requires_grad_(saved[n])


def _internvl_processor(adapter: VLMAdapter):
    """InternVLProcessor around the adapter's tokenizer and image processor, without the video processor
    (torchvision), set up as its __init__ does."""
    from transformers import InternVLProcessor

    tok = adapter.tokenizer
    processor = object.__new__(InternVLProcessor)
    processor.tokenizer, processor.image_processor = tok, adapter.image_processor
    processor.chat_template = adapter.chat_template
    processor.image_seq_length = adapter.model.config.image_seq_length
    processor.start_image_token, processor.end_image_token = tok.start_image_token, tok.end_image_token
    processor.start_image_token_id, processor.end_image_token_id = tok.start_image_token_id, tok.end_image_token_id
    processor.image_token, processor.image_token_id = tok.context_image_token, tok.context_image_token_id
    processor.video_token = tok.video_token
    processor.multimodal_pattern = re.compile(f"(?P<image>{re.escape(processor.image_token)})|"
                                              f"(?P<video>{re.escape(processor.video_token)})")
    return processor


def test_internvl_manual_path_equals_internvl_processor(adapter_for):
    """The manual rows (GotOcr2ImageProcessorPil tiles + placeholder) equal InternVLProcessor's, and a mixed
    batch carries the tiles of its image rows in row order, as the processor lays out a batch."""
    manual = adapter_for("internvl")
    processor = _internvl_processor(manual)
    real = type(manual)(manual.model, processor)
    assert real.image_token == manual.image_token == "<IMG_CONTEXT>"
    for item in ITEMS:
        a, b = manual.encode(item, for_generation=False), real.encode(item, for_generation=False)
        assert a.input_ids == b.input_ids and a.answer_start == b.answer_start
        assert sorted(a.vision) == sorted(b.vision) == ([] if item.image is None else ["pixel_values"])
        assert all(torch.equal(a.vision[k], b.vision[k]) for k in a.vision)
    tiles = [manual.encode(it, for_generation=True).vision["pixel_values"].shape[0] for it in ITEMS if it.image]
    assert tiles == [5, 3, 1], "a square image: 2x2 tiles + thumbnail; 2:1 -> 2x1 + thumbnail; one tile alone"
    texts = [real.render(it, with_answer=False) for it in ITEMS]
    expected = processor(text=texts, images=[it.image for it in ITEMS if it.image is not None], padding=True,
                         return_tensors="pt")
    batch = manual.format(ITEMS, for_generation=True)
    assert torch.equal(batch.inputs["input_ids"], expected["input_ids"])
    assert torch.equal(batch.inputs["attention_mask"], expected["attention_mask"])
    assert torch.equal(batch.inputs["pixel_values"], expected["pixel_values"])


def test_internvl_shared_prompt_prefill_gives_the_samples_of_separate_rows(adapter_for):
    """Several samples of one image prompt from one prefill (decoding loop and `generate` alike) equal those of
    separate rows."""
    adapter = adapter_for("internvl")
    seeds = [[1, 2, 3], [4], [5, 6]]
    items = ITEMS[:3]
    assert adapter.shares_prompt_prefill and adapter.drops_finished_rows
    shared = adapter.sample(items, seeds, max_new_tokens=4, temperature=1.5)
    try:
        adapter.drops_finished_rows = False
        through_generate = adapter.sample(items, seeds, max_new_tokens=4, temperature=1.5)
        adapter.shares_prompt_prefill = False
        separate = adapter.sample(items, seeds, max_new_tokens=4, temperature=1.5)
    finally:
        for flag in ("drops_finished_rows", "shares_prompt_prefill"):
            vars(adapter).pop(flag, None)  # back to the class's flags
    assert [len(t) for t in shared] == [3, 1, 2]
    assert shared == through_generate == separate


def test_a_training_batch_run_from_a_layer_equals_the_whole_forward(adapter):
    """Logits, loss and the gradient of a layer-1 weight: the same from the stored layer-1 input as whole."""
    tower_calls: list[int] = []
    for items in groups(adapter, ITEMS):
        batch = adapter.format(items, for_generation=False)
        start = adapter.from_layer(batch, 1)
        if not adapter.resumes_at_layer:
            assert start is batch
            continue
        assert start.layer == 1 and start.layer_input.shape[:2] == batch.inputs["input_ids"].shape
        down = adapter.model.get_submodule(adapter.module_names().mlp_down[1]).weight
        results = []
        hook = adapter.model.get_submodule(adapter.module_names().vision_tower).register_forward_hook(
            lambda *_: tower_calls.append(1))
        try:
            for run in (batch, start):
                tower_calls.clear()
                down.requires_grad_(True)
                out = adapter.forward_batch(run, with_labels=True)
                out.loss.backward()
                results.append((out.logits.detach(), out.loss.detach(), down.grad.clone(), bool(tower_calls)))
                down.grad = None
        finally:
            hook.remove()
            down.requires_grad_(False)
        (logits, loss, grad, whole_tower), (r_logits, r_loss, r_grad, resumed_tower) = results
        assert torch.allclose(r_logits, logits, atol=1e-5) and torch.allclose(r_loss, loss, atol=1e-6)
        assert torch.allclose(r_grad, grad, atol=1e-6) and grad.abs().sum() > 0
        assert whole_tower == any(run.image is not None for run in items)
        assert resumed_tower == (whole_tower and adapter.resume_keeps_vision)
    with pytest.raises(ConfigError, match="outside"):
        adapter.from_layer(adapter.format(ITEMS[1:2], for_generation=False), adapter.num_layers)


@pytest.mark.parametrize("layer", [0, 1])
def test_resuming_above_a_changed_down_projection_equals_the_whole_forward(adapter, layer):
    """States of a model changed only in one layer's MLP down-projection, from the unchanged model's residual
    and projection input of that layer: residual + the changed projection, then the layers above."""
    if not adapter.resumes_after_mlp_down(layer):
        assert layer >= adapter.num_layers - 1 or not adapter.resumes_at_layer
        with pytest.raises(MMUnlearnError, match="cannot resume"):
            adapter.mlp_down_inputs(ITEMS, layer)
        return
    store = adapter.mlp_down_inputs(ITEMS, layer)
    before = adapter.hidden_states(ITEMS)
    assert torch.allclose(store.lower, before[:, :layer + 1])
    assert store.lengths.tolist() == [len(adapter.encode(it, for_generation=True).input_ids) for it in ITEMS]
    formatted, text = adapter.format(ITEMS, for_generation=True), store.text_batch(range(len(ITEMS)))
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(text.inputs[key], formatted.inputs[key].cpu()), key
    down = adapter.model.get_submodule(adapter.module_names().mlp_down[layer]).weight
    saved = down.detach().clone()
    try:
        with torch.no_grad():
            down.add_(torch.randn_like(down))
        whole = adapter.hidden_states(ITEMS)
        order = list(range(len(ITEMS)))[::-1]  # rows are looked up, not taken in order
        resumed = adapter.hidden_states([ITEMS[i] for i in order], resume=store.rows(order))[torch.tensor(order)]
    finally:
        with torch.no_grad():
            down.copy_(saved)
    assert not torch.allclose(whole[:, -1], before[:, -1], atol=1e-3), "the change must reach the top layer"
    assert torch.allclose(resumed, whole, atol=1e-5)


def test_resuming_at_a_layer_equals_the_whole_forward(adapter):
    """States of a model changed only from layer 1 up, resumed from the unchanged model's layer-1 inputs."""
    if not adapter.resumes_at_layer:
        with pytest.raises(MMUnlearnError, match="cannot resume"):
            adapter.layer_inputs(ITEMS, 1)
        return
    stored = adapter.layer_inputs(ITEMS, 1)
    before = adapter.hidden_states(ITEMS)
    for item, kept, row in zip(ITEMS, stored, before):
        assert kept.states.shape[0] == len(adapter.encode(item, for_generation=True).input_ids)
        assert torch.allclose(kept.lower, row[:2]) and torch.allclose(kept.states[-1].float(), row[1])
    down = adapter.model.get_submodule(adapter.module_names().mlp_down[1]).weight
    saved = down.detach().clone()
    try:
        with torch.no_grad():
            down.add_(torch.randn_like(down))
        whole = adapter.hidden_states(ITEMS)
        tower_calls: list[int] = []
        hook = adapter.model.get_submodule(adapter.module_names().vision_tower).register_forward_hook(
            lambda *_: tower_calls.append(1))
        try:
            resumed = adapter.hidden_states(ITEMS, resume=stored)
        finally:
            hook.remove()
    finally:
        with torch.no_grad():
            down.copy_(saved)
    assert not torch.allclose(whole[:, 2], before[:, 2], atol=1e-3), "the change must reach the top layer"
    assert torch.allclose(resumed, whole, atol=1e-5)
    assert bool(tower_calls) == adapter.resume_keeps_vision, "the vision tower runs only where it sets positions"
    assert not any("forward" in vars(adapter.model.get_submodule(n)) for n in adapter.module_names().layers), \
        "the skipped layers get their own forward back"
    with pytest.raises(MMUnlearnError, match="another prompt"):
        adapter.hidden_states(ITEMS, resume=stored[1:] + stored[:1])
    with pytest.raises(ConfigError, match="outside"):
        adapter.layer_inputs(ITEMS, 0)


def test_gemma3_image_block_mask_reaches_every_forward(adapter_for):
    """Gemma 3's soft tokens attend both ways through `token_type_ids`: the adapter's equal the processor's, they
    change the image rows' scores, and a text-only batch carries none."""
    adapter = adapter_for("gemma3")
    item = ITEMS[0]
    batch = adapter.format([item], for_generation=False)
    text = adapter.render(item, with_answer=False)
    expected = adapter.processor(text=[text], images=[item.image], return_tensors="pt", add_special_tokens=False)
    prompt = batch.inputs["token_type_ids"][0, :expected["input_ids"].shape[1]]
    assert torch.equal(prompt, expected["token_type_ids"][0].long()) and int(prompt.sum()) == 4
    with torch.no_grad():
        both_ways = adapter.model(**batch.model_inputs()).logits
        inputs = {k: v for k, v in batch.model_inputs().items() if k != "token_type_ids"}
        causal = adapter.model(**inputs).logits
    assert not torch.allclose(both_ways, causal, atol=1e-4)
    text_only = adapter.format([ITEMS[1]], for_generation=False)
    assert adapter.from_layer(batch, 1).inputs["token_type_ids"].sum() == 4, "kept above the vision tower"
    assert "token_type_ids" not in text_only.inputs


def test_gemma3_pan_and_scan_stays_off_as_in_the_processor(adapter_for):
    """An image processor configured for pan-and-scan: Gemma3Processor's call turns it off, and so does the
    manual path (one view, 4 soft tokens), with the same ids and pixels."""
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor

    base = adapter_for("gemma3")
    image_processor = Gemma3ImageProcessorPil(size={"height": 16, "width": 16}, do_pan_and_scan=True,
                                              pan_and_scan_min_crop_size=8, pan_and_scan_max_num_crops=4,
                                              pan_and_scan_min_ratio_to_activate=1.2,
                                              image_mean=[0.5] * 3, image_std=[0.5] * 3)
    item = ITEMS[2]  # 32 x 16: three views when pan-and-scan runs
    assert image_processor(images=[item.image], return_tensors="pt")["pixel_values"].shape[0] == 3
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=base.tokenizer,
                                chat_template=base.chat_template, image_seq_length=4)
    full = type(base)(base.model, processor)
    manual = type(base)(base.model, None, tokenizer=base.tokenizer, image_processor=image_processor,
                        chat_template=base.chat_template)
    a, b = full.encode(item, for_generation=False), manual.encode(item, for_generation=False)
    assert a.input_ids == b.input_ids and a.answer_start == b.answer_start
    assert torch.equal(torch.as_tensor(a.vision["pixel_values"]), torch.as_tensor(b.vision["pixel_values"]))
    assert torch.as_tensor(b.vision["pixel_values"]).shape[0] == 1 and b.input_ids.count(base.image_token_id) == 4


def _onevision_processor(adapter: VLMAdapter):
    """LlavaOnevisionProcessor over the adapter's tokenizer and image processor, built without the video processor
    (needing torchvision) that keeps its constructor from running here."""
    from transformers import LlavaOnevisionProcessor

    config = adapter.model.config
    processor = object.__new__(LlavaOnevisionProcessor)
    processor.tokenizer, processor.image_processor = adapter.tokenizer, adapter.image_processor
    processor.chat_template = adapter.chat_template
    processor.image_token, processor.video_token = "<image>", "<video>"
    processor.image_token_id = adapter.tokenizer.convert_tokens_to_ids("<image>")
    processor.video_token_id = adapter.tokenizer.convert_tokens_to_ids("<video>")
    processor.num_image_tokens = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    processor.vision_feature_select_strategy = config.vision_feature_select_strategy
    processor.vision_aspect_ratio = config.vision_aspect_ratio
    return processor


def test_onevision_manual_path_equals_llava_onevision_processor(adapter_for):
    """The manual rows, and a generation prompt, equal LlavaOnevisionProcessor's; the answer turn's header
    (`assistant \\n`) is not the generation prompt's (`assistant\\n`), and the answer follows either."""
    manual = adapter_for("llava_onevision")
    processor = _onevision_processor(manual)
    real = type(manual)(manual.model, processor)
    for item in ITEMS:
        a, b = manual.encode(item, for_generation=False), real.encode(item, for_generation=False)
        assert a.input_ids == b.input_ids and a.answer_start == b.answer_start
        assert sorted(a.vision) == sorted(b.vision)
        assert all(torch.equal(torch.as_tensor(a.vision[k]), torch.as_tensor(b.vision[k])) for k in a.vision)
        assert not manual.render(item, with_answer=True).startswith(manual.render(item, with_answer=False))
        end = manual.tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert a.input_ids[a.answer_start:] == manual.tokenizer(item.answer)["input_ids"] + [end]
    for item in ITEMS[:2]:
        content = ([{"type": "image", "image": item.image}] if item.image is not None else [])
        content.append({"type": "text", "text": item.question})
        expected = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                 tokenize=True, return_dict=True, return_tensors="pt")
        batch = manual.format([item], for_generation=True)
        assert batch.inputs["input_ids"].tolist() == expected["input_ids"].tolist()
        if item.image is not None:
            assert torch.equal(batch.inputs["pixel_values"], expected["pixel_values"])
    with pytest.raises(MMUnlearnError, match="does not extend"):
        manual._answer_tail("<|im_start|>assistant\n", "<|im_start|>user\nred<|im_end|>")


def test_onevision_placeholders_match_processor_and_model_features(adapter_for):
    """Image tokens per image size: the processor's count and the model's packed features (one tile or many,
    unpadded, shrunk by anyres_max_9 or not); a mixed batch of all of them runs."""
    from vlm_fixtures import picture

    adapter = adapter_for("llava_onevision")
    real = type(adapter)(adapter.model, _onevision_processor(adapter))
    # (width, height) -> tokens; 8x8: base + one tile of 2 x 2 + 2 newlines; 32x32: 8 x 8 shrunk to 6 x 6.
    known = {(8, 8): 10, (16, 16): 24, (32, 16): 40, (32, 32): 46}
    items = [VLMInput(picture(10 + k, size), "what is this creature ?", "zorp")
             for k, size in enumerate([*known, (6, 10), (12, 40), (64, 48), (100, 30), (40, 12)])]
    for item in items:
        row = adapter.encode(item, for_generation=True)
        n = sum(t == adapter.image_token_id for t in row.input_ids)
        assert row.input_ids == real.encode(item, for_generation=True).input_ids
        assert n == known.get(item.image.size, n)
        vision = adapter._collate_vision([row], [0])
        with torch.no_grad():
            features = adapter.model.model.get_image_features(**vision).pooler_output
        assert sum(f.shape[0] for f in features) == n
    scores = adapter.answer_logprobs(items)
    adapter.batch_size, saved = 1, adapter.batch_size
    try:
        alone = adapter.answer_logprobs(items)
    finally:
        adapter.batch_size = saved
    assert [s.total for s in scores] == pytest.approx([s.total for s in alone], abs=1e-4)


def test_paligemma_rows_equal_paligemma_processor(adapter_for):
    """A padded batch of image rows is the processor's, prompt + suffix (ids, mask, token types, labels, pixels),
    and so is a generation prompt; the built-in layout is the processor's text."""
    adapter = adapter_for("paligemma")
    processor = adapter.processor
    assert processor is not None and not getattr(processor, "chat_template", None)
    items = [it for it in ITEMS if it.image is not None]
    expected = processor(text=[it.question for it in items], images=[it.image for it in items],
                         suffix=[it.answer for it in items], padding=True, return_tensors="pt")
    batch = adapter.format(items, for_generation=False)
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels", "pixel_values"):
        assert torch.equal(batch.inputs[key], expected[key].to(batch.inputs[key].dtype)), key
    for item in items:
        row = adapter.encode(item, for_generation=True)
        alone = processor(text=[adapter.image_token + item.question], images=[item.image], return_tensors="pt")
        assert row.input_ids == alone["input_ids"][0].tolist()
        assert row.input_ids.count(adapter.image_token_id) == processor.image_seq_length == 16
        assert adapter.render(item, with_answer=False) == f"<image><bos>{item.question}\n"
        assert adapter.render(item, with_answer=True) == f"<image><bos>{item.question}\n{item.answer}<eos>"


def test_paligemma_text_only_rows_are_the_prefix_without_image(adapter_for):
    """The processor refuses a row without an image; the model takes one, written as the processor writes the
    prefix of an image row, without the image tokens, with the prefix-LM token types."""
    adapter = adapter_for("paligemma")
    item = ITEMS[1]
    with pytest.raises(ValueError, match="images"):
        adapter.processor(text=[item.question], return_tensors="pt")
    tok = adapter.tokenizer
    row = adapter.encode(item, for_generation=False)
    prefix = tok(f"{tok.bos_token}{item.question}\n", add_special_tokens=False)["input_ids"]
    assert row.input_ids == prefix + tok(item.answer + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert row.answer_start == len(prefix) and not row.has_image
    with_image = adapter.encode(VLMInput(ITEMS[0].image, item.question, item.answer), for_generation=False)
    assert with_image.input_ids[16:] == row.input_ids
    batch = adapter.format([item], for_generation=False)
    assert batch.inputs["token_type_ids"][0].tolist() == [0] * len(prefix) + [1] * (len(row.input_ids) - len(prefix))


def test_paligemma_generation_equals_generate_on_processor_inputs(adapter_for):
    """Greedy answers of image rows are those of `model.generate` on the processor's own inputs."""
    adapter = adapter_for("paligemma")
    items = [it for it in ITEMS if it.image is not None]
    inputs = adapter.processor(text=[it.question for it in items], images=[it.image for it in items], padding=True,
                               return_tensors="pt")
    inputs.pop("labels")
    with torch.no_grad():
        out = adapter.model.generate(**inputs, max_new_tokens=5, do_sample=False,
                                     eos_token_id=adapter.stop_token_ids, pad_token_id=adapter.pad_token_id)
    expected = [adapter._decode(row) for row in out[:, inputs["input_ids"].shape[1]:].tolist()]
    assert adapter.generate(items, max_new_tokens=5) == expected


def test_paligemma_prefix_attention_reaches_every_forward(adapter_for):
    """The prefix attends both ways through `token_type_ids` (1 on the answer only): they change the scores, a
    batch run from a layer keeps them (the answer marked), and a text-only generation prompt carries zeros."""
    adapter = adapter_for("paligemma")
    batch = adapter.format(ITEMS, for_generation=False)
    types = batch.inputs["token_type_ids"]
    assert torch.equal(types.bool(), batch.inputs["labels"] != -100)
    with torch.no_grad():
        prefix_lm = adapter.model(**batch.model_inputs()).logits
        causal = adapter.model(**{k: v for k, v in batch.model_inputs().items() if k != "token_type_ids"}).logits
    assert not torch.allclose(prefix_lm, causal, atol=1e-4)
    resumed = adapter.from_layer(batch, 1)
    assert "pixel_values" not in resumed.inputs and torch.equal(resumed.inputs["token_type_ids"], types)
    text_only = adapter.format([ITEMS[1]], for_generation=True)
    assert text_only.inputs["token_type_ids"].sum() == 0


def test_paligemma_logit_lens_applies_the_soft_cap(adapter_for):
    """The Gemma 2 decoder caps its logits; the lens's last layer is the model's output with the cap only."""
    adapter = adapter_for("paligemma")
    assert adapter.text_config.final_logit_softcapping == 5.0
    batch = adapter.format(ITEMS, for_generation=True)
    with torch.no_grad():
        out = adapter.model(**batch.model_inputs(), output_hidden_states=True)
    states = torch.stack(list(out.hidden_states), dim=1)[:, :, -1]
    final = out.logits[:, -1].float().log_softmax(-1)
    assert torch.allclose(adapter.lens_logprobs(states, range(3))[:, -1], final, atol=1e-5)
    uncapped = VLMAdapter.lens_logprobs(adapter, states, range(3))
    assert not torch.allclose(uncapped[:, -1], final, atol=1e-4)


def test_paligemma_shared_prompt_prefill_gives_the_samples_of_separate_rows(adapter_for):
    """Several samples of one prompt, image rows and text-only rows mixed: from one whole-prompt prefill (the
    decoding loop), through `generate` on repeated rows, and as separate rows, alike."""
    adapter = adapter_for("paligemma")
    seeds = [[1, 2, 3], [4, 5], [6], [7, 8]]
    items = ITEMS[:4]
    shared = adapter.sample(items, seeds, max_new_tokens=4, temperature=1.5)
    try:
        adapter.drops_finished_rows = False
        through_generate = adapter.sample(items, seeds, max_new_tokens=4, temperature=1.5)
        adapter.shares_prompt_prefill = False
        separate = adapter.sample(items, seeds, max_new_tokens=4, temperature=1.5)
    finally:
        for flag in ("drops_finished_rows", "shares_prompt_prefill"):
            vars(adapter).pop(flag, None)  # back to the class's flags
    assert [len(t) for t in shared] == [3, 2, 1, 2]
    assert shared == through_generate == separate
