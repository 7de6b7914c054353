"""The tiny LLaVA-architecture model: a real HF `LlavaForConditionalGeneration`, built from scratch.

Tokenizer (word level, trained with `tokenizers`), PIL image processor (no torchvision), processor
with a chat template, and model are all saved with `save_pretrained`, so the Auto classes load the
result exactly as they load a hub model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from mmunlearn.config_checks import at_least

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN]

# Handles string content and list content ({"type": "image"} / {"type": "text"}) alike.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- 'user : ' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image> ' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- ' assistant : ' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}{{- part['text'] -}}{%- endfor -%}{%- endif -%}"
    "{{- ' </s>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- ' assistant :' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Sizes of the tiny model; part of the pretraining cache key."""

    image_size: int = field(default=32, metadata=at_least(1))
    patch_size: int = field(default=8, metadata=at_least(1))
    vision_hidden: int = field(default=64, metadata=at_least(1))
    vision_layers: int = field(default=2, metadata=at_least(1))
    vision_heads: int = field(default=4, metadata=at_least(1))
    text_hidden: int = field(default=128, metadata=at_least(1))
    text_layers: int = field(default=4, metadata=at_least(1))
    text_heads: int = field(default=4, metadata=at_least(1))
    max_positions: int = field(default=128, metadata=at_least(1))
    tie_embeddings: bool = False

    @property
    def image_seq_length(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def build_tokenizer(lines: Iterable[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(lines, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN}, padding_side="left", chat_template=CHAT_TEMPLATE)


def world_image_processor(image_size: int) -> CLIPImageProcessorPil:
    """A PIL CLIP image processor (no torchvision) for square world images."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def llava_processor(tokenizer, image_size: int, patch_size: int, chat_template: str) -> LlavaProcessor:
    """A LLaVA processor over `world_image_processor`."""
    return LlavaProcessor(
        image_processor=world_image_processor(image_size), tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=chat_template)


def build_processor(tokenizer: PreTrainedTokenizerFast, spec: TinyLlavaSpec) -> LlavaProcessor:
    return llava_processor(tokenizer, spec.image_size, spec.patch_size, CHAT_TEMPLATE)


def vision_config(spec: TinyLlavaSpec) -> CLIPVisionConfig:
    """The tiny model's CLIP-style vision tower."""
    return CLIPVisionConfig(
        image_size=spec.image_size, patch_size=spec.patch_size, hidden_size=spec.vision_hidden,
        intermediate_size=4 * spec.vision_hidden, num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads)


def build_model(tokenizer: PreTrainedTokenizerFast, spec: TinyLlavaSpec) -> LlavaForConditionalGeneration:
    vision = vision_config(spec)
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.text_hidden, intermediate_size=4 * spec.text_hidden,
        num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads, max_position_embeddings=spec.max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=spec.tie_embeddings)
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=spec.image_seq_length, vision_feature_select_strategy="default",
        vision_feature_layer=-1, projector_hidden_act="gelu", tie_word_embeddings=spec.tie_embeddings)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def render_prompt(prompt: str, has_image: bool, image_seq_length: int, answer: str | None = None) -> str:
    """The chat template's output with the image placeholder already expanded (fast training path)."""
    image = (IMAGE_TOKEN * image_seq_length + " ") if has_image else ""
    text = f"user : {image}{prompt} assistant :"
    return text if answer is None else f"{text} {answer} </s>"
