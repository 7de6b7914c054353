"""Tiny random VLMs of each family, built offline from configs and saved like hub checkpoints.

Each builder trains a word-level tokenizer with `tokenizers` (the family's special tokens included), uses the
family's real PIL image processor class, and writes model + tokenizer + image processor (+ processor where
it can be built without torchvision) with `save_pretrained`, so `load_adapter` reads them as it reads a hub
model. Sizes: hidden 16-32, 1-3 layers, 16-32 px images.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    GotOcr2ImageProcessorPil,
    Idefics2Config,
    Idefics2ForConditionalGeneration,
    Idefics2ImageProcessorPil,
    Idefics2Processor,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessorPil,
    MllamaProcessor,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    PixtralImageProcessorPil,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
)

from mmunlearn.models.adapters import VLMInput
from mmunlearn.models.tiny_llava import TinyLlavaSpec, build_model, build_processor, build_tokenizer

WORDS = ("what colour is this creature ? what does the zorp eat ? where does the blip live ? red berries cave "
         "zorp blip name of you are a helpful assistant . user assistant system : question answer")

# The chat template of llava-hf/llava-1.5-*-hf: no end-of-turn in the answer turn (the adapter appends eos).
LLAVA15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'text') %}{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Qwen2-VL's ChatML template (default system turn, vision markers around the image pad).
QWEN2VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] "
    "!= 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>"
    "{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL-Instruct's ChatML template: unlike Qwen2-VL's, no default system turn.
QWEN3VL_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}{% if message['role'] != 'system' %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# HuggingFaceM4/Idefics3-8B-Llama3's template (BOS written by the template itself).
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'].capitalize()}}{% if message['content'][0]"
    "['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if "
    "line['type'] == 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# HuggingFaceM4/idefics2-8b's template: Idefics3's without the BOS (the Mistral tokenizer adds it).
IDEFICS2_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}{% if message['content'][0]['type'] == 'image' %}"
    "{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}"
    "{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# OpenGVLab/InternVL3-*-hf's ChatML template (no default system turn; the image is `<IMG_CONTEXT>` + newline).
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\\n' }}{% elif content['type'] == 'video' %}{{ '<video>\\n' }}{% elif content['type'] == "
    "'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}{% endif %}"
)

# Llama-3.2-Vision-Instruct style.
MLLAMA_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<|image|>{% elif content['type'] "
    "== 'text' %}{{ content['text'] }}{% endif %}{% endfor %}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# Gemma 3's template, shortened (no system-turn folding): the image marker is <start_of_image>.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' else "
    "message['role'] %}<start_of_turn>{{ role }}\n{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>{% elif "
    "item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# llava-hf/llava-onevision-qwen2-*-hf's template without its video part: the answer turn's header is
# "<|im_start|>assistant \n", the generation prompt "<|im_start|>assistant\n".
ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# mistralai/Mistral-Small-3.1-24B-Instruct-2503's template, shortened (no tools, no date in the default system
# prompt): BOS, a system turn, `[INST]...[/INST]` with `[IMG]` where the image is, the answer closed by eos.
MISTRAL3_TEMPLATE = (
    "{%- set default_system_message = 'you are a helpful assistant .' %}{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- if messages[0]['content'] is string %}"
    "{%- set system_message = messages[0]['content'] %}{%- else %}"
    "{%- set system_message = messages[0]['content'][0]['text'] %}{%- endif %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system_message = default_system_message %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}{%- if message['content'] is string %}"
    "{{- '[INST]' + message['content'] + '[/INST]' }}{%- else %}{{- '[INST]' }}{%- for block in message['content'] %}"
    "{%- if block['type'] == 'text' %}{{- block['text'] }}{%- elif block['type'] == 'image' or block['type'] == "
    "'image_url' %}{{- '[IMG]' }}{%- else %}{{- raise_exception('Only text and image blocks are supported in message "
    "content!') }}{%- endif %}{%- endfor %}{{- '[/INST]' }}{%- endif %}{%- elif message['role'] == 'assistant' %}"
    "{%- if message['content'] is string %}{{- message['content'] + eos_token }}{%- else %}"
    "{{- message['content'][0]['text'] + eos_token }}{%- endif %}{%- else %}"
    "{{- raise_exception('Only user and assistant roles are supported!') }}{%- endif %}{%- endfor %}"
)

HALF = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def picture(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    w, h = size
    draw.rectangle((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=tuple(rng.randrange(256) for _ in range(3)))
    return img


def make_items() -> list[VLMInput]:
    """Image and text-only rows interleaved, images of two aspect ratios."""
    return [
        VLMInput(picture(1), "what colour is this creature ?", "red"),
        VLMInput(None, "what does the zorp eat ?", "berries"),
        VLMInput(picture(2, (32, 16)), "what is the name of this creature ?", "zorp blip"),
        VLMInput(None, "where does the blip live ?", "cave"),
        VLMInput(picture(3, (16, 16)), "what does this creature eat ?", "berries"),
    ]


def word_tokenizer(specials: list[str], *, bos: str | None, eos: str, pad: str, template: str,
                   add_bos: bool, extra: dict[str, str] | None = None, words: str = "") -> PreTrainedTokenizerFast:
    """`words`: the family's chat-template words beyond WORDS (Gemma's "model" turn)."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = list(dict.fromkeys(["<unk>", *specials]))
    tok.train_from_iterator([f"{WORDS} {words}"], trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1))
    if add_bos and bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    kwargs = {"extra_special_tokens": extra} if extra else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<unk>",
                                   pad_token=pad, padding_side="left", chat_template=template, **kwargs)


def _llama(tok: PreTrainedTokenizerFast, **kw: object) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       tie_word_embeddings=False, **kw)


def _save_random_model(model_cls, config, tok: PreTrainedTokenizerFast, out: Path, seed: int) -> None:
    """A seeded random model with the tokenizer's special ids for generation, saved to `out`."""
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.save_pretrained(out)


TINY_SPEC = TinyLlavaSpec(image_size=16, patch_size=8, vision_hidden=16, vision_layers=1, vision_heads=2,
                          text_hidden=32, text_layers=2, text_heads=2, max_positions=128)


def build_llava_tiny(out: Path) -> Path:
    """The repo's own tiny LLaVA (mmunlearn.models.tiny_llava), as the pretraining pipeline saves it."""
    tok = build_tokenizer([WORDS])
    torch.manual_seed(0)
    build_model(tok, TINY_SPEC).save_pretrained(out)
    build_processor(tok, TINY_SPEC).save_pretrained(out)
    return out


def build_llava15(out: Path) -> Path:
    """LLaVA with the llava-1.5-hf chat template (answer turn without an end-of-turn token)."""
    tok = build_tokenizer([WORDS])
    torch.manual_seed(1)
    build_model(tok, TINY_SPEC).save_pretrained(out)
    processor = build_processor(tok, TINY_SPEC)
    processor.chat_template = LLAVA15_TEMPLATE
    processor.save_pretrained(out)
    return out


def build_llava_next(out: Path) -> Path:
    tok = word_tokenizer(["<pad>", "<s>", "</s>", "<image>"], bos="<s>", eos="</s>", pad="<pad>",
                         template=LLAVA15_TEMPLATE, add_bos=True, extra={"image_token": "<image>"})
    pinpoints = [[16, 32], [32, 16], [32, 32]]
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                                 image_grid_pinpoints=pinpoints, **HALF)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA15_TEMPLATE)
    vision = CLIPVisionConfig(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2)
    config = LlavaNextConfig(vision_config=vision, text_config=_llama(tok),
                             image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
                             vision_feature_select_strategy="default", vision_feature_layer=-1,
                             tie_word_embeddings=False)
    _save_random_model(LlavaNextForConditionalGeneration, config, tok, out, seed=2)
    processor.save_pretrained(out)
    return out


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]


def _build_qwen(out: Path, config_cls, model_cls, vision: dict, seed: int, template: str = QWEN2VL_TEMPLATE,
                text_overrides: dict | None = None) -> Path:
    """Qwen2-VL-style model without its processor (needs torchvision): tokenizer + Qwen2VLImageProcessorPil."""
    tok = word_tokenizer(QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>", template=template,
                         add_bos=False)
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 256}, patch_size=4,
                                               temporal_patch_size=2, merge_size=2, **HALF)
    ids = tok.convert_tokens_to_ids
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": None, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
            **(text_overrides or {})}
    config = config_cls(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                        video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                        vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=False)
    _save_random_model(model_cls, config, tok, out, seed=seed)
    tok.save_pretrained(out)
    image_processor.save_pretrained(out)
    return out


def build_qwen2_vl(out: Path) -> Path:
    vision = {"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2, "patch_size": 4,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
    return _build_qwen(out, Qwen2VLConfig, Qwen2VLForConditionalGeneration, vision, seed=3)


def build_qwen2_5_vl(out: Path) -> Path:
    """Qwen2.5-VL (windowed vision attention) through the same adapter code and manual path as Qwen2-VL."""
    vision = {"depth": 2, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "patch_size": 4,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3, "window_size": 16,
              "out_hidden_size": 32, "fullatt_block_indexes": [1]}
    return _build_qwen(out, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, vision, seed=7)


def build_qwen3_vl(out: Path) -> Path:
    """Qwen3-VL: DeepStack adds the outputs of vision blocks 0 and 1 to the residual after decoder layers 0 and 1
    (3 layers, so resuming at layer 1 and above either MLP crosses an addition); interleaved M-RoPE with
    head_dim 16 = 2 * (4 + 2 + 2) as the real model's 128 = 2 * (24 + 20 + 20)."""
    vision = {"depth": 2, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "patch_size": 4,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3, "out_hidden_size": 32,
              "num_position_embeddings": 16, "deepstack_visual_indexes": [0, 1]}
    text = {"num_hidden_layers": 3, "head_dim": 16,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 2, 2],
                                "mrope_interleaved": True}}
    return _build_qwen(out, Qwen3VLConfig, Qwen3VLForConditionalGeneration, vision, seed=8,
                       template=QWEN3VL_TEMPLATE, text_overrides=text)


# 8 px crops of 2 x 2 SigLIP patches: of the test images, 16x16 fills 2 x 2 tiles; 32x16 is padded into the
# 32x32 grid and unpadded back to 4 x 8 features; 32x32 fills 4 x 4 tiles, 8 x 8 features, more than
# anyres_max_9 allows (9 crops' worth, 36), so the model shrinks them to 6 x 6.
ONEVISION_PINPOINTS = [[8, 8], [8, 16], [16, 8], [16, 16], [32, 32]]


def _onevision_parts() -> tuple[PreTrainedTokenizerFast, LlavaOnevisionImageProcessorPil, LlavaOnevisionConfig]:
    tok = word_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"], bos=None,
                         eos="<|im_end|>", pad="<|endoftext|>", template=ONEVISION_TEMPLATE, add_bos=False)
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": 8, "width": 8},
                                                      image_grid_pinpoints=ONEVISION_PINPOINTS, **HALF)
    vision = SiglipVisionConfig(image_size=8, patch_size=4, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, vision_use_head=False)
    text = {"model_type": "qwen2", "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "bos_token_id": None, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
            "tie_word_embeddings": False}
    ids = tok.convert_tokens_to_ids
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=ids("<image>"),
                                  video_token_index=ids("<video>"), image_grid_pinpoints=ONEVISION_PINPOINTS,
                                  vision_feature_select_strategy="full", vision_feature_layer=-1,
                                  vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False)
    return tok, image_processor, config


def build_llava_onevision(out: Path) -> Path:
    """LLaVA-OneVision without its processor (needs torchvision): tokenizer + LlavaOnevisionImageProcessorPil."""
    tok, image_processor, config = _onevision_parts()
    _save_random_model(LlavaOnevisionForConditionalGeneration, config, tok, out, seed=8)
    tok.save_pretrained(out)
    image_processor.save_pretrained(out)
    return out


IDEFICS_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<pad>", "<fake_token_around_image>", "<image>",
                    "<end_of_utterance>", "<global-img>"] + \
    [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]


def _idefics_parts() -> tuple[PreTrainedTokenizerFast, dict, dict]:
    tok = word_tokenizer(IDEFICS_SPECIALS, bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<pad>",
                         template=IDEFICS3_TEMPLATE, add_bos=True)
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 16, "patch_size": 4}
    image_kwargs = {"size": {"longest_edge": 32}, "max_image_size": {"longest_edge": 16}, "do_image_splitting": True,
                    **HALF}
    return tok, vision, image_kwargs


def build_idefics3(out: Path) -> Path:
    tok, vision, image_kwargs = _idefics_parts()
    processor = Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**image_kwargs), tokenizer=tok,
                                  image_seq_len=4, chat_template=IDEFICS3_TEMPLATE)
    config = Idefics3Config(vision_config=vision, text_config=_llama(tok), scale_factor=2,
                            image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    _save_random_model(Idefics3ForConditionalGeneration, config, tok, out, seed=4)
    processor.save_pretrained(out)
    return out


def build_smolvlm(out: Path) -> Path:
    """SmolVLM without its processor (needs torchvision): tokenizer + SmolVLMImageProcessorPil only."""
    tok, vision, image_kwargs = _idefics_parts()
    config = SmolVLMConfig(vision_config=vision, text_config=_llama(tok), scale_factor=2,
                           image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    _save_random_model(SmolVLMForConditionalGeneration, config, tok, out, seed=5)
    tok.save_pretrained(out)
    SmolVLMImageProcessorPil(**image_kwargs).save_pretrained(out)
    return out


IDEFICS2_SPECIALS = ["<s>", "</s>", "<fake_token_around_image>", "<image>", "<end_of_utterance>"]


def build_idefics2(out: Path) -> Path:
    """Idefics2 with its processor (no torchvision needed): Mistral decoder (pad = `<unk>`, id 0, as the real
    tokenizer), a 1-layer perceiver of 4 latents per view, image splitting on as in idefics2-8b.

    Views fit 16 px (at least 8 px a side) in 4 px patches: a 32x32 image gives five 16x16 views; 32x16 five
    views of 16x8; 16x16 four 8x8 crops padded beside the 16x16 whole image.
    """
    tok = word_tokenizer(IDEFICS2_SPECIALS, bos="<s>", eos="</s>", pad="<unk>", template=IDEFICS2_TEMPLATE,
                         add_bos=True)
    image_processor = Idefics2ImageProcessorPil(size={"shortest_edge": 8, "longest_edge": 16}, do_image_splitting=True,
                                                **HALF)
    processor = Idefics2Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=4,
                                  chat_template=IDEFICS2_TEMPLATE)
    text = {"model_type": "mistral", "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512,
            "sliding_window": 24, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id, "tie_word_embeddings": False}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 16, "patch_size": 4}
    perceiver = {"hidden_size": 32, "resampler_n_latents": 4, "resampler_depth": 1, "resampler_n_heads": 2,
                 "resampler_head_dim": 8, "num_key_value_heads": 1}
    config = Idefics2Config(text_config=text, vision_config=vision, perceiver_config=perceiver,
                            image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    _save_random_model(Idefics2ForConditionalGeneration, config, tok, out, seed=10)
    # The resampler's latents start as ones (every image token of a view alike), and at the initial scale of its
    # weights its output is the latents' alone (the image moves a logit by 1e-5): larger random values, so the
    # image reaches the text.
    model = Idefics2ForConditionalGeneration.from_pretrained(out)
    torch.manual_seed(11)
    with torch.no_grad():
        for name, param in model.model.connector.named_parameters():
            if name.endswith("latents"):
                param.normal_(0.0, 1.0)
            elif param.dim() == 2:
                param.normal_(0.0, 0.5)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


MLLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|image|>", "<|python_tag|>", "<|finetune_right_pad_id|>"]


def build_mllama(out: Path) -> Path:
    tok = word_tokenizer(MLLAMA_SPECIALS, bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
                         template=MLLAMA_TEMPLATE, add_bos=True)
    image_processor = MllamaImageProcessorPil(size={"height": 16, "width": 16}, max_image_tiles=4, **HALF)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=MLLAMA_TEMPLATE)
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_global_layers": 1,
              "attention_heads": 2, "image_size": 16, "patch_size": 8, "max_num_tiles": 4,
              "intermediate_layers_indices": [0], "vision_output_dim": 32}
    # As in Llama-3.2-Vision, self-attention layers come first and last, a cross-attention layer in between.
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
            "num_attention_heads": 2, "num_key_value_heads": 2, "cross_attention_layers": [1],
            "max_position_embeddings": 512, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id}
    config = MllamaConfig(vision_config=vision, text_config=text,
                          image_token_index=tok.convert_tokens_to_ids("<|image|>"))
    _save_random_model(MllamaForConditionalGeneration, config, tok, out, seed=6)
    processor.save_pretrained(out)
    return out


GEMMA3_SPECIALS = ["<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                   "<end_of_image>", "<image_soft_token>"]


def build_gemma3(out: Path) -> Path:
    """Gemma 3: 2x2 pooled soft tokens per 16 px image, one sliding-window layer (window 6) and one global."""
    tok = word_tokenizer(GEMMA3_SPECIALS, bos="<bos>", eos="<eos>", pad="<pad>", template=GEMMA3_TEMPLATE,
                         add_bos=True, words="model",
                         extra={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                "image_token": "<image_soft_token>"})
    ids = tok.convert_tokens_to_ids
    image_processor = Gemma3ImageProcessorPil(size={"height": 16, "width": 16}, **HALF)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=GEMMA3_TEMPLATE,
                                image_seq_length=4)
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "sliding_window": 6,
            "layer_types": ["sliding_attention", "full_attention"], "max_position_embeddings": 512,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 16, "patch_size": 4, "vision_use_head": False}
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
                          image_token_index=ids("<image_soft_token>"), tie_word_embeddings=False)
    _save_random_model(Gemma3ForConditionalGeneration, config, tok, out, seed=8)
    # Gemma's projector weight starts at zero: random values, so the image reaches the text.
    model = Gemma3ForConditionalGeneration.from_pretrained(out)
    torch.manual_seed(9)
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.5)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


INTERNVL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
INTERNVL_TOKENS = {"context_image_token": "<IMG_CONTEXT>", "start_image_token": "<img>", "end_image_token": "</img>",
                   "video_token": "<video>"}


def build_internvl(out: Path) -> Path:
    """InternVL3-style model without its processor (the video processor needs torchvision): tokenizer and
    GotOcr2ImageProcessorPil, with the hub's processor and video-processor configs beside them.

    16 px tiles of 4 px patches give 4 `<IMG_CONTEXT>` per tile; up to 4 tiles + thumbnail (a 32x32 image: 5).
    """
    tok = word_tokenizer(INTERNVL_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                         template=INTERNVL_TEMPLATE, add_bos=False, extra=INTERNVL_TOKENS)
    image_processor = GotOcr2ImageProcessorPil(size={"height": 16, "width": 16}, crop_to_patches=False, min_patches=1,
                                               max_patches=4, **HALF)
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 16, "patch_size": 4}
    text = {"model_type": "qwen2", "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512,
            "bos_token_id": None, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
            "tie_word_embeddings": False}
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=tok.context_image_token_id,
                            image_seq_length=4, downsample_ratio=0.5, tie_word_embeddings=False)
    _save_random_model(InternVLForConditionalGeneration, config, tok, out, seed=8)
    tok.save_pretrained(out)
    image_processor.save_pretrained(out)
    # As on the hub: the processor (image_seq_length) and its video processor, which cannot load here.
    (out / "processor_config.json").write_text(json.dumps({"processor_class": "InternVLProcessor",
                                                           "image_seq_length": 4}))
    (out / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "InternVLVideoProcessor", "processor_class": "InternVLProcessor",
        "size": {"height": 16, "width": 16}, **HALF}))
    return out


MISTRAL3_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                     "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]


def _mistral3_parts() -> tuple[PreTrainedTokenizerFast, PixtralImageProcessorPil]:
    """Tokenizer and image processor as on the hub: the image processor's own patch size is the tower's (the
    processor asks it for patch * merge); longest edge 24 px, so 32 px images shrink and odd grids appear."""
    tok = word_tokenizer(MISTRAL3_SPECIALS, bos="<s>", eos="</s>", pad="<pad>", template=MISTRAL3_TEMPLATE,
                         add_bos=True)
    image_processor = PixtralImageProcessorPil(size={"longest_edge": 24}, patch_size={"height": 4, "width": 4},
                                               **HALF)
    return tok, image_processor


def build_mistral3(out: Path) -> Path:
    """Mistral Small 3.1-style model without its processor (needs torchvision): tokenizer + PixtralImageProcessorPil.

    4 px patches merged 2 x 2: the test images become 24x24 (3 x 3 `[IMG]`), 16x24 (2 x 3) and 16x16 (2 x 2) and
    a batch pads them to 24x24.
    """
    tok, image_processor = _mistral3_parts()
    text = {"model_type": "mistral", "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
            "max_position_embeddings": 512, "sliding_window": None, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "tie_word_embeddings": False}
    vision = {"model_type": "pixtral", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 24, "patch_size": 4}
    config = Mistral3Config(text_config=text, vision_config=vision, spatial_merge_size=2, vision_feature_layer=-1,
                            image_token_index=tok.convert_tokens_to_ids("[IMG]"), tie_word_embeddings=False)
    _save_random_model(Mistral3ForConditionalGeneration, config, tok, out, seed=10)
    tok.save_pretrained(out)
    image_processor.save_pretrained(out)
    # As on the hub: the processor's config (patch size and merge), which cannot load here.
    (out / "processor_config.json").write_text(json.dumps({"processor_class": "PixtralProcessor", "patch_size": 4,
                                                           "spatial_merge_size": 2}))
    return out


PALIGEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<image>", "\n"]


def build_paligemma(out: Path) -> Path:
    """PaliGemma 2: 16 px images of 4 px SigLIP patches (16 image tokens), a Gemma 2 decoder of two layers (one
    sliding-window, window 6, and one global) whose logits are soft-capped at 5 so that the cap shows.

    `PaliGemmaProcessor` adds its 1152 `<locNNNN>` / `<segNNN>` tokens to the tokenizer, as on the hub, and no
    chat template: the adapter brings its own layout. The newline the prefix ends with is a token of its own, as
    in Gemma's vocabulary.
    """
    tok = word_tokenizer(PALIGEMMA_SPECIALS, bos="<bos>", eos="<eos>", pad="<pad>", template="", add_bos=True,
                         extra={"image_token": "<image>"})
    tok.chat_template = None
    image_processor = SiglipImageProcessorPil(size={"height": 16, "width": 16}, image_seq_length=16, **HALF)
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    text = {"model_type": "gemma2", "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
            "sliding_window": 6, "layer_types": ["sliding_attention", "full_attention"],
            "final_logit_softcapping": 5.0, "max_position_embeddings": 512, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 16, "patch_size": 4, "vision_use_head": False}
    config = PaliGemmaConfig(text_config=text, vision_config=vision, projection_dim=32, hidden_size=32,
                             vocab_size=len(tok), image_token_index=tok.convert_tokens_to_ids("<image>"))
    _save_random_model(PaliGemmaForConditionalGeneration, config, tok, out, seed=10)
    processor.save_pretrained(out)
    return out


BUILDERS = {
    "llava_tiny": build_llava_tiny,
    "llava15": build_llava15,
    "llava_next": build_llava_next,
    "qwen2_vl": build_qwen2_vl,
    "qwen2_5_vl": build_qwen2_5_vl,
    "qwen3_vl": build_qwen3_vl,
    "idefics2": build_idefics2,
    "idefics3": build_idefics3,
    "smolvlm": build_smolvlm,
    "mllama": build_mllama,
    "gemma3": build_gemma3,
    "llava_onevision": build_llava_onevision,
    "internvl": build_internvl,
    "mistral3": build_mistral3,
    "paligemma": build_paligemma,
}
