"""Every family adapter against its own tiny random model: formatting, scores, probes, generation, accounting."""

from __future__ import annotations

import re

import pytest
import torch
from vlm_fixtures import BUILDERS, make_items

from mmunlearn.errors import ConfigError, MMUnlearnError
from mmunlearn.models.adapters import VLMAdapter, VLMInput
from mmunlearn.models.adapters.gemma3 import Gemma3Adapter
from mmunlearn.models.adapters.idefics2 import Idefics2Adapter
from mmunlearn.models.adapters.idefics3 import Idefics3Adapter, SmolVLMAdapter
from mmunlearn.models.adapters.internvl import InternVLAdapter
from mmunlearn.models.adapters.llava import LlavaAdapter
from mmunlearn.models.adapters.llava_next import LlavaNextAdapter
from mmunlearn.models.adapters.llava_onevision import LlavaOnevisionAdapter
from mmunlearn.models.adapters.mistral3 import Mistral3Adapter
from mmunlearn.models.adapters.mllama import MllamaAdapter
from mmunlearn.models.adapters.paligemma import PaliGemmaAdapter
from mmunlearn.models.adapters.qwen2_vl import Qwen2VLAdapter, Qwen25VLAdapter
from mmunlearn.models.adapters.qwen3_vl import Qwen3VLAdapter

FAMILIES = list(BUILDERS)
EXPECTED_CLASS = {"llava_tiny": LlavaAdapter, "llava15": LlavaAdapter, "llava_next": LlavaNextAdapter,
                  "qwen2_vl": Qwen2VLAdapter, "qwen2_5_vl": Qwen25VLAdapter, "qwen3_vl": Qwen3VLAdapter,
                  "idefics2": Idefics2Adapter, "idefics3": Idefics3Adapter, "smolvlm": SmolVLMAdapter,
                  "mllama": MllamaAdapter, "gemma3": Gemma3Adapter,
                  "llava_onevision": LlavaOnevisionAdapter, "internvl": InternVLAdapter, "mistral3": Mistral3Adapter,
                  "paligemma": PaliGemmaAdapter}
ITEMS = make_items()


def groups(adapter: VLMAdapter, items: list[VLMInput]) -> list[list[VLMInput]]:
    """The batches a caller may format directly: all items, or one per modality where mixing is not allowed."""
    if adapter.can_mix_modalities:
        return [items]
    return [[it for it in items if it.image is not None], [it for it in items if it.image is None]]


def assert_rows_match(manual: VLMAdapter, real: VLMAdapter, vision_keys: list[str] | None = None) -> None:
    """Every item's teacher-forced row from the manual path equals the real processor's: ids, answer start and
    vision tensors (`vision_keys`: the keys an image row must carry)."""
    for item in ITEMS:
        a, b = manual.encode(item, for_generation=False), real.encode(item, for_generation=False)
        assert a.input_ids == b.input_ids and a.answer_start == b.answer_start
        assert sorted(a.vision) == sorted(b.vision)
        if vision_keys is not None:
            assert sorted(a.vision) == ([] if item.image is None else sorted(vision_keys))
        assert all(torch.equal(torch.as_tensor(a.vision[k]), torch.as_tensor(b.vision[k])) for k in a.vision)


def assert_generation_prompts_match(manual: VLMAdapter, processor, items: list[VLMInput], vision_keys: list[str],
                                    text_keys: tuple[str, ...] | list[str] = ()) -> None:
    """`format` of one item for generation equals `processor.apply_chat_template(tokenize=True)`: ids, the
    `text_keys` and, for an image item, the `vision_keys`."""
    for item in items:
        content = ([{"type": "image", "image": item.image}] if item.image is not None else [])
        content.append({"type": "text", "text": item.question})
        expected = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                 tokenize=True, return_dict=True, return_tensors="pt")
        batch = manual.format([item], for_generation=True)
        assert batch.inputs["input_ids"].tolist() == expected["input_ids"].tolist()
        for key in text_keys:
            assert torch.equal(batch.inputs[key], expected[key].long()), key
        for key in vision_keys if item.image is not None else ():
            assert torch.equal(batch.inputs[key], expected[key]), key


def assert_batched_scores_equal_single_rows(adapter: VLMAdapter, items: list[VLMInput]) -> None:
    """Answer log-probs of `items` in the adapter's batches equal those of one row per batch."""
    scores = adapter.answer_logprobs(items)
    adapter.batch_size, saved = 1, adapter.batch_size
    try:
        single = adapter.answer_logprobs(items)
    finally:
        adapter.batch_size = saved
    assert [s.total for s in scores] == pytest.approx([s.total for s in single], abs=1e-4)


def bare_processor(cls: type, adapter: VLMAdapter, image_token: str, video_token: str):
    """A processor of class `cls` over the adapter's tokenizer, image processor and chat template, built without
    running its constructor (which builds the video processor torchvision is needed for)."""
    processor = object.__new__(cls)
    processor.tokenizer, processor.image_processor = adapter.tokenizer, adapter.image_processor
    processor.chat_template = adapter.chat_template
    processor.image_token, processor.video_token = image_token, video_token
    processor.image_token_id = adapter.tokenizer.convert_tokens_to_ids(image_token)
    processor.video_token_id = adapter.tokenizer.convert_tokens_to_ids(video_token)
    return processor


@pytest.fixture(params=FAMILIES)
def adapter(request, adapter_for) -> VLMAdapter:
    return adapter_for(request.param)


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_the_family_adapter(family, adapter_for):
    adapter = adapter_for(family)
    assert type(adapter) is EXPECTED_CLASS[family]
    # Qwen2-VL, Qwen3-VL, SmolVLM, LLaVA-OneVision, InternVL and Pixtral (Mistral 3) processors need torchvision:
    # those run the manual (PIL + tokenizer) path.
    assert (adapter.processor is None) == (family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm",
                                                      "llava_onevision", "internvl", "mistral3"))


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


@pytest.mark.parametrize("family", ["llava_tiny", "llava15", "llava_next", "idefics2", "idefics3", "mllama", "gemma3",
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


def _idefics2_pair(base: VLMAdapter, splitting: bool) -> tuple[VLMAdapter, VLMAdapter]:
    """Idefics2 adapters over one image processor (`do_image_splitting` as asked): through `Idefics2Processor`,
    and the manual path. The processor gets a copy of the tokenizer, to which its constructor adds tokens."""
    import copy

    from transformers import Idefics2ImageProcessorPil, Idefics2Processor

    image_processor = Idefics2ImageProcessorPil(size={"shortest_edge": 8, "longest_edge": 16},
                                                do_image_splitting=splitting, image_mean=[0.5] * 3,
                                                image_std=[0.5] * 3)
    processor = Idefics2Processor(image_processor=image_processor, tokenizer=copy.deepcopy(base.tokenizer),
                                  image_seq_len=4, chat_template=base.chat_template)
    full = type(base)(base.model, processor)
    manual = type(base)(base.model, None, tokenizer=base.tokenizer, image_processor=image_processor,
                        chat_template=base.chat_template)
    return full, manual


@pytest.mark.parametrize("splitting", [True, False])
def test_idefics2_manual_path_writes_the_processors_text(splitting, adapter_for, monkeypatch):
    """With image splitting (4 crops + whole image, 5 views) or without (1 view), the manual path tokenises the
    very text `Idefics2Processor` does, spaces included (a word glued to the closing fake token gets one: a
    real tokenizer splits it differently), and gets its ids and pixels."""
    full, manual = _idefics2_pair(adapter_for("idefics2"), splitting)
    fake, image = "<fake_token_around_image>", "<image>"
    seen: list[str] = []
    call = type(manual.tokenizer).__call__

    def spy(self, text=None, *args, **kwargs):
        seen.extend([text] if isinstance(text, str) else text)
        return call(self, text, *args, **kwargs)

    monkeypatch.setattr(type(manual.tokenizer), "__call__", spy)
    views = 5 if splitting else 1
    for question in ("what colour is this creature ?", " what colour is this creature ?", "(what) colour ?"):
        prompt = full.render(VLMInput(ITEMS[2].image, question), with_answer=False)
        seen.clear()
        a, b = full._encode_prompt(prompt, ITEMS[2].image), manual._encode_prompt(prompt, ITEMS[2].image)
        assert len(seen) == 2 and seen[0] == seen[1], seen
        assert seen[0].count(fake) == views + 1 and seen[0].count(image) == 4 * views
        assert f"{fake} {question.lstrip()}<end_of_utterance>" in seen[0]
        assert a[0] == b[0] and sorted(a[1]) == sorted(b[1]) == ["pixel_attention_mask", "pixel_values"]
        assert all(torch.equal(a[1][k], b[1][k]) for k in a[1])
        assert a[1]["pixel_values"].shape[1] == views
    for item in ITEMS:
        a, b = full.encode(item, for_generation=False), manual.encode(item, for_generation=False)
        assert a.input_ids == b.input_ids and a.answer_start == b.answer_start


def test_idefics2_views_tokens_and_vision_positions_follow_the_model(adapter_for):
    """Per image: 5 views of 4 latents each, and the vision positions the adapter counts are the patches the
    tower attends (the model's patch mask); a text-only row of a mixed batch is all-zero views the model drops,
    and the connector's work over the patches is in the FLOPs."""
    adapter = adapter_for("idefics2")
    image_items = [it for it in ITEMS if it.image is not None]
    counts = adapter.token_counts(image_items)
    assert [c.image for c in counts] == [20, 20, 20]
    # 32x32: five 16x16 views; 32x16: five 16x8 views; 16x16: four 8x8 crops + the 16x16 whole image.
    assert [c.vision_positions for c in counts] == [80, 40, 32]
    attended: list[int] = []
    handle = adapter.model.model.vision_model.register_forward_pre_hook(
        lambda module, args, kwargs: attended.append(int(kwargs["patch_attention_mask"].sum())), with_kwargs=True)
    try:
        batch = adapter.format(ITEMS, for_generation=True)
        with torch.no_grad():
            features = adapter.model.model.get_image_features(batch.inputs["pixel_values"],
                                                             batch.inputs["pixel_attention_mask"]).pooler_output
    finally:
        handle.remove()
    assert attended == [sum(c.vision_positions for c in counts)]
    assert [f.shape[0] for f in features] == [20, 0, 20, 0, 20]
    assert not batch.inputs["pixel_values"][1].any() and not batch.inputs["pixel_attention_mask"][3].any()
    connector = adapter.model.model.connector
    p_tower = sum(p.numel() for p in adapter.model.model.vision_model.parameters())
    p_connector = sum(p.numel() for p in connector.parameters())
    p_patch = sum(p.numel() for p in connector.modality_projection.parameters())
    attn = connector.perceiver_resampler.layers[0].self_attn
    p_kv = attn.k_proj.weight.numel() + attn.v_proj.weight.numel()
    for count, flops in zip(counts, adapter.flops(image_items, backward=False)):
        v, i = count.vision_positions, count.image
        assert flops.vision == pytest.approx(2.0 * (p_tower * v + p_connector * i + p_patch * (v - i) + p_kv * v))
    # The fixture's connector lets the image reach the answers (so misplaced pixels would show in other tests).
    from vlm_fixtures import picture

    other = [VLMInput(picture(50, it.image.size), it.question, it.answer) for it in image_items]
    for a, b in zip(adapter.answer_logprobs(image_items), adapter.answer_logprobs(other)):
        assert abs(a.total - b.total) > 1e-3


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


@pytest.mark.parametrize("family", ["llava_tiny", "llava15", "llava_next", "idefics2", "idefics3", "mllama", "gemma3"])
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
    processor = bare_processor(Qwen2VLProcessor, manual, "<|image_pad|>", "<|video_pad|>")
    real = type(manual)(manual.model, processor)
    assert_rows_match(manual, real)
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
    processor = bare_processor(Qwen3VLProcessor, manual, "<|image_pad|>", "<|video_pad|>")
    for name in ("start", "end"):
        setattr(processor, f"vision_{name}_token", f"<|vision_{name}|>")
        setattr(processor, f"vision_{name}_token_id", tok.convert_tokens_to_ids(f"<|vision_{name}|>"))
    real = Qwen3VLAdapter(manual.model, processor)
    assert_rows_match(manual, real)
    assert_generation_prompts_match(manual, processor, ITEMS[:3], ["pixel_values", "image_grid_thw"],
                                    ["mm_token_type_ids"])


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
    assert_rows_match(manual, real, vision_keys=["pixel_values"])
    tiles = [manual.encode(it, for_generation=True).vision["pixel_values"].shape[0] for it in ITEMS if it.image]
    assert tiles == [5, 3, 1], "a square image: 2x2 tiles + thumbnail; 2:1 -> 2x1 + thumbnail; one tile alone"
    texts = [real.render(it, with_answer=False) for it in ITEMS]
    expected = processor(text=texts, images=[it.image for it in ITEMS if it.image is not None], padding=True,
                         return_tensors="pt")
    batch = manual.format(ITEMS, for_generation=True)
    assert torch.equal(batch.inputs["input_ids"], expected["input_ids"])
    assert torch.equal(batch.inputs["attention_mask"], expected["attention_mask"])
    assert torch.equal(batch.inputs["pixel_values"], expected["pixel_values"])


def test_shared_prompt_prefill_gives_the_samples_of_separate_rows(adapter):
    """Several samples of one prompt from one prefill (the distinct prompts' vision inputs only) equal those of
    separate rows, through the decoding loop and `generate` alike (families without either run the same path)."""
    seeds = [[1, 2, 3], [4], [5, 6]]
    items = ITEMS[:3]
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
    processor = bare_processor(LlavaOnevisionProcessor, adapter, "<image>", "<video>")
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
    assert_rows_match(manual, real)
    for item in ITEMS:
        a = manual.encode(item, for_generation=False)
        assert not manual.render(item, with_answer=True).startswith(manual.render(item, with_answer=False))
        end = manual.tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert a.input_ids[a.answer_start:] == manual.tokenizer(item.answer)["input_ids"] + [end]
    assert_generation_prompts_match(manual, processor, ITEMS[:2], ["pixel_values"])
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
    assert_batched_scores_equal_single_rows(adapter, items)


def _pixtral_processor(adapter: VLMAdapter):
    """PixtralProcessor (patch 4, merge 2, as the fixture's processor config) over the adapter's tokenizer and image
    processor. Its module imports the torchvision image processor for one helper (a token count the adapter does
    not use): it is imported here with the PIL module's helper in that module's place, and the module table put
    back afterwards, so `AutoProcessor` still fails as it does without torchvision."""
    import importlib
    import sys
    import types

    from transformers.models import pixtral
    from transformers.models.pixtral import image_processing_pil_pixtral

    torchvision_module = "transformers.models.pixtral.image_processing_pixtral"
    processing = "transformers.models.pixtral.processing_pixtral"
    stub = types.ModuleType(torchvision_module)
    stub.get_resize_output_image_size = image_processing_pil_pixtral.get_resize_output_image_size
    saved = {name: sys.modules.get(name) for name in (torchvision_module, processing)}
    had_attribute = "processing_pixtral" in vars(pixtral)
    sys.modules[torchvision_module] = stub
    sys.modules.pop(processing, None)
    try:
        processor_cls = importlib.import_module(processing).PixtralProcessor
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        if not had_attribute:
            vars(pixtral).pop("processing_pixtral", None)
    return processor_cls(image_processor=adapter.image_processor, tokenizer=adapter.tokenizer, patch_size=4,
                         spatial_merge_size=2, chat_template=adapter.chat_template)


def test_mistral3_manual_path_equals_pixtral_processor(adapter_for):
    """The manual rows, a generation prompt and a whole mixed batch (images of three sizes padded to the largest,
    text-only rows) equal PixtralProcessor's."""
    manual = adapter_for("mistral3")
    processor = _pixtral_processor(manual)
    real = type(manual)(manual.model, processor)
    assert real.image_token == manual.image_token == "[IMG]"
    assert_rows_match(manual, real, vision_keys=["image_sizes", "pixel_values"])
    sizes = [manual.encode(it, for_generation=True).vision["image_sizes"][0].tolist() for it in ITEMS if it.image]
    assert sizes == [[24, 24], [16, 24], [16, 16]], "longest edge 24, sides rounded up to 8 px (4 px patches x 2)"
    assert_generation_prompts_match(manual, processor, ITEMS[:3], ["pixel_values", "image_sizes"])
    texts = [manual.render(it, with_answer=False) for it in ITEMS]
    expected = processor(text=texts, images=[it.image for it in ITEMS if it.image is not None], padding=True,
                         add_special_tokens=False, return_tensors="pt")
    batch = manual.format(ITEMS, for_generation=True)
    for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes"):
        assert torch.equal(batch.inputs[key], expected[key]), key
    row = manual.encode(ITEMS[0], for_generation=True).input_ids
    tokens = manual.tokenizer.convert_ids_to_tokens(row)
    assert (tokens.count("[IMG]"), tokens.count("[IMG_BREAK]"), tokens.count("[IMG_END]")) == (9, 2, 1)


def test_mistral3_placeholders_match_model_features_and_padding_is_cropped(adapter_for):
    """`[IMG]` per image size equals the model's merged features; in a batch padded to the largest image every
    image gets the features it gets alone, and every row its score alone."""
    from vlm_fixtures import picture

    adapter = adapter_for("mistral3")
    sizes = [(8, 16), (16, 16), (32, 16), (32, 32), (6, 10), (12, 40), (64, 48), (100, 30), (40, 12)]
    items = [VLMInput(picture(20 + k, size), "what is this creature ?", "zorp") for k, size in enumerate(sizes)]
    alone = []
    for item in items:
        row = adapter.encode(item, for_generation=True)
        height, width = row.vision["image_sizes"][0].tolist()
        assert height % 8 == width % 8 == 0 and max(height, width) <= 24
        n = sum(t == adapter.image_token_id for t in row.input_ids)
        assert n == (height // 8) * (width // 8)
        assert adapter.token_counts([item])[0].vision_positions == (height // 4) * (width // 4)
        with torch.no_grad():
            features = adapter.model.model.get_image_features(**adapter._collate_vision([row], [0])).pooler_output
        assert len(features) == 1 and features[0].shape[0] == n
        alone.append(features[0])
    rows = [adapter.encode(item, for_generation=True) for item in items]
    vision = adapter._collate_vision(rows, [0] * len(rows))
    assert vision["pixel_values"].shape[-2:] == (24, 24)
    with torch.no_grad():
        together = adapter.model.model.get_image_features(**vision).pooler_output
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(alone, together))
    # transformers' get_image_features squeezes a batch of one merged feature in all (a lone image of at most
    # 2 x 2 patches: 28 x 28 px on the real model) to a vector and cannot split it; with other images it runs.
    small = adapter.encode(VLMInput(picture(30, (8, 8)), "what is this creature ?", "zorp"), for_generation=True)
    with pytest.raises(RuntimeError, match="split"), torch.no_grad():
        adapter.model.model.get_image_features(**adapter._collate_vision([small], [0]))
    with torch.no_grad():
        both = adapter.model.model.get_image_features(**adapter._collate_vision([small, rows[0]], [0, 0])).pooler_output
    assert [f.shape[0] for f in both] == [1, alone[0].shape[0]] and torch.allclose(both[1], alone[0], atol=1e-5)
    mixed = [it for pair in zip(items, ITEMS * 2) for it in pair]
    assert_batched_scores_equal_single_rows(adapter, mixed)


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
    uncapped = adapter.model.get_output_embeddings()(states[:, -1]).float().log_softmax(-1)  # last: already normed
    assert not torch.allclose(uncapped, final, atol=1e-4)
