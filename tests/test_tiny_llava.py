import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmunlearn.models.tiny_llava import IMAGE_TOKEN, render_prompt
from mmunlearn.world.render import render_creature


def chat(text: str, image: bool, answer: str | None = None) -> list[dict]:
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    msgs = [{"role": "user", "content": content}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def test_image_token_is_one_special_token(micro_tokenizer):
    ids = micro_tokenizer(f"{IMAGE_TOKEN} what is this creature ?")["input_ids"]
    assert ids[0] == micro_tokenizer.bos_token_id
    assert ids[1] == micro_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert micro_tokenizer.unk_token_id not in ids


def test_chat_template_handles_string_and_list_content(micro_processor):
    as_list = micro_processor.apply_chat_template(chat("what is this creature ?", True), add_generation_prompt=True,
                                                  tokenize=False)
    assert as_list == "user : <image> what is this creature ? assistant :"
    as_str = micro_processor.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                                 tokenize=False)
    assert as_str == "user : hi assistant :"
    full = micro_processor.apply_chat_template(chat("q ?", False, "a"), tokenize=False)
    assert full == "user : q ? assistant : a </s>"


def test_fast_prompt_path_equals_processor(micro_world, micro_processor, micro_tokenizer):
    world, _ = micro_world
    img = render_creature(world.creatures[0], size=16)
    for image in (True, False):
        text = micro_processor.apply_chat_template(chat("what does this creature eat ?", image),
                                                   add_generation_prompt=True, tokenize=False)
        inputs = micro_processor(images=[img] if image else None, text=[text], return_tensors="pt")
        fast = micro_tokenizer(render_prompt("what does this creature eat ?", image, 4))["input_ids"]
        assert inputs["input_ids"][0].tolist() == fast
        assert ("pixel_values" in inputs) == image


def test_save_load_round_trip_through_auto_classes(tmp_path, micro_world, micro_model, micro_processor):
    world, _ = micro_world
    micro_model.save_pretrained(tmp_path)
    micro_processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    model = AutoModelForImageTextToText.from_pretrained(tmp_path, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"
    text = processor.apply_chat_template(chat("what is this creature ?", True), add_generation_prompt=True,
                                         tokenize=False)
    inputs = processor(images=[render_creature(world.creatures[1], size=16)], text=[text], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, micro_model.eval()(**inputs).logits)
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 3
