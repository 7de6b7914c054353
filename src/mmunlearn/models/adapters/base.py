"""One model interface over Hugging Face VLMs: `VLMAdapter`, its records, and the family registry.

The rest of mmunlearn touches a model only through an adapter, so defenses, attacks and metrics are
written once and run on LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL/2.5-VL/3-VL, Idefics2, Idefics3/SmolVLM,
Mllama, Gemma 3, InternVL, Mistral 3 and PaliGemma alike. A family is one module under
`mmunlearn.models.adapters`, registered by the config's `model_type` (never by matching the model's name), and
it holds all family knowledge: module paths, where the final norm lives, how image placeholders expand and how
vision tensors batch.

Inputs are built row by row (chat template -> prompt ids + vision tensors) and then left-padded into one
batch. Two ways to build a row, with identical results:

* the processor path (`processor(text=..., images=...)`), used whenever the family's processor loads;
* the manual path (the family's PIL image processor + tokenizer, the placeholder expanded by the family
  module), used when the processor cannot be built, e.g. Qwen2-VL and SmolVLM processors without torchvision.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import hashlib
import importlib
import inspect
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from PIL import Image
from torch import nn

from mmunlearn.errors import ConfigError, MMUnlearnError, one_line
from mmunlearn.models.cache_name import CACHE
from mmunlearn.registry import did_you_mean

if TYPE_CHECKING:
    from mmunlearn.models.row_sampling import RowSeededSampler

IGNORE_INDEX = -100

# Inputs laid out like the token ids ([batch, seq]): sliced with them (a prompt's prefix for a shared KV cache).
_TOKEN_ALIGNED = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")

# Keys a processor returns that belong to the text side; everything else is a vision tensor of the row.
_TEXT_KEYS = frozenset({*_TOKEN_ALIGNED, "text_replacement_offsets", "offset_mapping"})

# End-of-turn markers of the chat formats these families use; those present in a tokenizer's vocabulary
# stop generation and end the teacher-forced answer (the tokenizer's eos always does too).
END_OF_TURN_CANDIDATES = ("<|im_end|>", "<|eot_id|>", "<end_of_utterance>", "<end_of_turn>", "<|end|>")

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True)
class VLMInput:
    """One question, with or without an image; `answer` is the teacher-forced target, if any."""

    image: Image.Image | None
    question: str
    answer: str | None = None


@dataclass(frozen=True)
class AnswerScore:
    """Log-probabilities of the answer tokens (end-of-turn included) given the generation prompt."""

    token_ids: list[int]
    tokens: list[str]
    logprobs: list[float]
    total: float


@dataclass(frozen=True)
class TokenCount:
    """Tokens of one example in the language model's sequence.

    `image` counts the positions filled with vision features (the image token); structural tokens around
    them (e.g. `<fake_token_around_image>`, `<|vision_start|>`) are text tokens. `vision_positions` is what
    the vision encoder itself processes (patches, CLS and crops/tiles included).
    """

    text: int
    image: int
    vision_positions: int = 0

    @property
    def total(self) -> int:
        return self.text + self.image


@dataclass(frozen=True)
class FlopCount:
    """Estimated FLOPs of one example; see `VLMAdapter.flops` for the formula."""

    text_tokens: int
    image_tokens: int
    vision_positions: int
    language: float
    vision: float
    backward: bool

    @property
    def total(self) -> float:
        return self.language + self.vision


@dataclass(frozen=True)
class ModuleNames:
    """Canonical module paths of a loaded model (for LoRA target regexes, hooks and freezing)."""

    language_model: str
    layers: list[str]
    attention: list[dict[str, str]]
    mlp_down: list[str]
    final_norm: str
    lm_head: str
    embed_tokens: str
    vision_tower: str
    projector: str

    def lora_target_regex(self, kinds: Sequence[str] = ("q", "k", "v", "o", "down")) -> str:
        """A regex (peft `target_modules`) matching only language-model layers, never the vision tower."""
        names = []
        for kind in kinds:
            if kind == "down":
                names.extend(self.mlp_down)
            else:
                names.extend(attn[kind] for attn in self.attention if kind in attn)
        if not names:
            raise ConfigError(f"no modules of kinds {list(kinds)}; known kinds: q, k, v, o, down")
        by_parent: dict[str, set[str]] = {}
        for name in names:
            parent, leaf = name.rsplit(".", 2)[-2:]
            by_parent.setdefault(parent, set()).add(leaf)
        alternatives = "|".join(f"{parent}\\.({'|'.join(sorted(leaves))})"
                                for parent, leaves in sorted(by_parent.items()))
        lm = self.language_model.replace(".", r"\.")
        return rf"{lm}\.layers\.\d+\.({alternatives})"


@dataclass
class VLMBatch:
    """A left-padded batch: `inputs` go straight into `model(**inputs)`.

    `inputs["labels"]` (teacher forcing only) keeps the answer tokens and end-of-turn, -100 elsewhere.
    `answer_spans[i]` is the [start, end) of row i's answer in padded coordinates (empty for generation).
    """

    inputs: dict[str, torch.Tensor]
    answer_spans: list[tuple[int, int]]
    has_image: list[bool]
    # Set by `VLMAdapter.from_layer`: `forward_batch` runs this batch from decoder layer `layer` up, that
    # layer's input being `layer_input` [batch, width, hidden] (on the model's device).
    layer: int | None = None
    layer_input: torch.Tensor | None = None

    def model_inputs(self, with_labels: bool = False) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.inputs.items() if with_labels or k != "labels"}

    def __len__(self) -> int:
        return len(self.answer_spans)


@dataclass
class EncodedRow:
    """One example as token ids plus its own vision tensors (leading dimension 1 where the family has one)."""

    input_ids: list[int]
    answer_start: int | None
    vision: dict[str, Any] = field(default_factory=dict)

    @property
    def has_image(self) -> bool:
        return bool(self.vision)


@dataclass(frozen=True)
class LayerInput:
    """What decoder layer `layer` reads for one prompt, kept so a model variant that differs from the model
    it came from only at `layer` and above can resume there (`hidden_states(items, resume=...)`).

    `states`: the layer's input over the prompt's own positions, unpadded `[seq, hidden]` in the model's
    dtype, on the CPU; `lower`: the last prompt position's hidden-state entries 0..layer `[layer + 1, hidden]`,
    fp32, as `hidden_states` returns them.
    """

    layer: int
    states: torch.Tensor
    lower: torch.Tensor


@dataclass(frozen=True)
class MlpDownStore:
    """What the MLP down-projection of decoder `layer` reads for many prompts, and the residual its output is
    added to, kept so a model variant that differs from the model they came from only in that projection (a
    per-fact delta on it) resumes just above it: the layer's output is `residual + projection(down_input)`, the
    layer's attention and the rest of its MLP skipped (`hidden_states(items, resume=store.rows(...))`).

    `residual` `[n, width, hidden]` and `down_input` `[n, width, intermediate]`: left-padded with zeros to the
    longest prompt, model dtype, CPU; `lengths`: each prompt's positions; `lower`: the last position's
    hidden-state entries 0..layer `[n, layer + 1, hidden]`, fp32.
    """

    layer: int
    residual: torch.Tensor
    down_input: torch.Tensor
    lengths: torch.Tensor
    lower: torch.Tensor
    input_ids: torch.Tensor  # [n, width], left-padded: the prompts' tokens, so resumed rows need no encoding

    def rows(self, indices: Sequence[int]) -> MlpDownRows:
        return MlpDownRows(self, tuple(int(i) for i in indices))

    def text_batch(self, rows: Sequence[int]) -> VLMBatch:
        """The text part (ids, mask) of a generation batch of these rows' prompts, as `format` pads it."""
        index = torch.tensor(list(rows), dtype=torch.long)
        lengths = self.lengths[index]
        width = int(lengths.max())
        ids = self.input_ids[index, self.input_ids.shape[1] - width:]
        mask = (torch.arange(width)[None, :] >= (width - lengths)[:, None]).long()
        return VLMBatch({"input_ids": ids, "attention_mask": mask}, [(width, width)] * len(index),
                        [False] * len(index))


@dataclass(frozen=True)
class MlpDownRows:
    """Items resuming above a down-projection: item k's prompt is row `rows[k]` of `store`."""

    store: MlpDownStore
    rows: tuple[int, ...]


class _LayerReached(Exception):
    """Stops a forward pass once the layer whose input `from_layer` wants has been reached."""


class VLMAdapter(abc.ABC):
    """The model interface: formatting, scoring, probing, generation, module names and cost accounting.

    Subclasses (one per family) set the class attributes and override the `_image_placeholder`,
    `_collate_vision` and `_vision_positions` hooks where the family differs from LLaVA.
    """

    model_types: ClassVar[tuple[str, ...]] = ()
    model_class_name: ClassVar[str] = ""
    image_processor_class_name: ClassVar[str | None] = None
    language_model_path: ClassVar[str] = "model.language_model"
    vision_tower_path: ClassVar[str] = "model.vision_tower"
    projector_path: ClassVar[str] = "model.multi_modal_projector"
    lm_head_path: ClassVar[str] = "lm_head"
    default_image_token: ClassVar[str] = "<image>"
    can_mix_modalities: ClassVar[bool] = True
    # Families whose generate can continue from a KV cache of the prompt built by a plain forward pass set
    # this True: `sample` then runs each prompt once for all its samples.
    shares_prompt_prefill: ClassVar[bool] = False
    # Families whose decoding is a plain KV-cache loop with positions from the attention mask (the rows of a
    # cache can be dropped independently) set this True: `generate` and `sample` then stop computing a row
    # once it has stopped instead of carrying it to the batch's longest answer.
    drops_finished_rows: ClassVar[bool] = False
    # Families whose rows need no image-token expansion in the text (cross-attention models) set this False.
    expands_image_tokens: ClassVar[bool] = True
    # Families whose decoder layers see the image only through the residual stream set this True: a forward
    # can then resume at a layer from stored inputs (`layer_inputs`), skipping the layers below it.
    resumes_at_layer: ClassVar[bool] = True
    # Families whose vision inputs also place the text (Qwen2-VL's M-RoPE positions) set this True: a resumed
    # forward keeps them. The others leave them out, and with them the vision tower, whose output would only
    # feed the skipped layers.
    resume_keeps_vision: ClassVar[bool] = False

    def __init__(self, model: nn.Module, processor: Any = None, *, tokenizer: Any = None,
                 image_processor: Any = None, chat_template: str | None = None, name: str = "",
                 batch_size: int = 8, encode_cache_size: int = 1024) -> None:
        if processor is None and (tokenizer is None or image_processor is None):
            raise ConfigError("an adapter needs a processor, or a tokenizer and an image processor")
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = tokenizer if tokenizer is not None else processor.tokenizer
        self.image_processor = image_processor if image_processor is not None else processor.image_processor
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.batch_size = max(1, int(batch_size))
        # Rows are re-encoded constantly (every attack and measurement asks the same images and questions);
        # tokenising and image processing dominate small-model runs, so encoded rows are kept in an LRU.
        self._encode_cache: OrderedDict[tuple, EncodedRow] = OrderedDict()
        self.encode_cache_size = max(0, int(encode_cache_size))
        self.chat_template = chat_template or getattr(processor, "chat_template", None) or \
            getattr(self.tokenizer, "chat_template", None)
        if not self.chat_template:
            raise MMUnlearnError(f"model {self.name!r} has no chat template (processor or tokenizer)")
        self.image_token_id = self._config_image_token_id()
        self.image_token = self._image_token_string()
        self.pad_token_id = self._pad_token_id()
        self.stop_token_ids = self._stop_token_ids()
        self._end_of_turn_strings = [t for t in (self._eot_tokens() + [self.tokenizer.eos_token]) if t]
        self._batch_hook: Callable[[list[int]], None] | None = None

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, path_or_id: str, config: Any, *, dtype: str = "float32", device_map: Any = None,
                        trust_remote_code: bool = False, local_files_only: bool | None = None,
                        batch_size: int = 8) -> VLMAdapter:
        """Load model (safetensors only) and processor; fall back to tokenizer + PIL image processor."""
        import transformers

        torch_dtype = resolve_dtype(dtype)
        common = {"trust_remote_code": trust_remote_code}
        if local_files_only is not None:
            common["local_files_only"] = local_files_only
        from safetensors import SafetensorError

        model_cls = getattr(transformers, cls.model_class_name)
        try:
            model = model_cls.from_pretrained(path_or_id, config=config, dtype=torch_dtype, device_map=device_map,
                                              use_safetensors=True, **common)
        except (OSError, ValueError, SafetensorError) as exc:  # the last: a truncated or corrupt weights file
            raise MMUnlearnError(f"cannot load model weights of {path_or_id!r} (safetensors only): "
                                 f"{one_line(exc)}") from None
        processor, tokenizer, image_processor, template = cls._load_processing(path_or_id, common)
        return cls(model, processor, tokenizer=tokenizer, image_processor=image_processor, chat_template=template,
                   name=str(path_or_id), batch_size=batch_size)

    @classmethod
    def _load_processing(cls, path_or_id: str, common: dict) -> tuple[Any, Any, Any, str | None]:
        from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin

        try:
            processor = AutoProcessor.from_pretrained(path_or_id, **common)
        except (ImportError, OSError, ValueError):  # e.g. a video processor needing torchvision: manual path
            processor = None
        if isinstance(processor, ProcessorMixin) and hasattr(processor, "image_processor"):
            return processor, None, None, None
        try:
            tokenizer = AutoTokenizer.from_pretrained(path_or_id, **common)
            image_processor = None
            if cls.image_processor_class_name:
                import transformers

                pil_cls = getattr(transformers, cls.image_processor_class_name, None)
                if pil_cls is not None:
                    image_processor = pil_cls.from_pretrained(path_or_id, **common)
            if image_processor is None:
                image_processor = AutoImageProcessor.from_pretrained(path_or_id, **common)
        except (OSError, ValueError) as exc:
            raise MMUnlearnError(f"cannot load tokenizer/image processor of {path_or_id!r}: "
                                 f"{one_line(exc)}") from None
        return None, tokenizer, image_processor, _read_chat_template(path_or_id, common)

    # ------------------------------------------------------------------ family hooks

    @abc.abstractmethod
    def _image_placeholder(self, vision: dict[str, Any]) -> str:
        """The expanded image placeholder for one image row (manual path only)."""

    def _image_processor_kwargs(self) -> dict[str, Any]:
        return {}

    def _collate_vision(self, rows: list[EncodedRow], pads: list[int]) -> dict[str, torch.Tensor]:
        """Default (LLaVA, Qwen2-VL): concatenate each vision tensor over the image rows, in row order."""
        image_rows = [r for r in rows if r.has_image]
        if not image_rows:
            return {}
        return {key: torch.cat([torch.as_tensor(r.vision[key]) for r in image_rows], dim=0)
                for key in image_rows[0].vision}

    def _extra_inputs(self, input_ids: torch.Tensor, rows: list[EncodedRow]) -> dict[str, torch.Tensor]:
        return self._inputs_from_ids(input_ids)

    def _inputs_from_ids(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model inputs the family derives from the padded token ids alone (Gemma 3's image-block mask). They
        travel with the text part of a batch, so a forward resumed above the vision tower still gets them."""
        return {}

    @abc.abstractmethod
    def _vision_positions(self, vision: dict[str, Any]) -> int:
        """Positions the vision encoder processes for one row (patches, CLS, all crops)."""

    def _complete_hidden_states(self, states: list[torch.Tensor]) -> list[torch.Tensor]:
        """Families whose forward skips layers (Mllama, text-only) fill the skipped entries here."""
        return states

    def _eot_tokens(self) -> list[str]:
        vocab = self.tokenizer.get_vocab()
        return [t for t in END_OF_TURN_CANDIDATES if t in vocab]

    # ------------------------------------------------------------------ formatting

    @staticmethod
    def _messages(item: VLMInput, with_answer: bool) -> list[dict[str, Any]]:
        """The item as a chat: a user turn (image first, then the question) and, with the answer, its reply."""
        content: list[dict[str, str]] = [{"type": "image"}] if item.image is not None else []
        content.append({"type": "text", "text": item.question})
        messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
        if with_answer:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": item.answer or ""}]})
        return messages

    def render(self, item: VLMInput, with_answer: bool) -> str:
        """The chat-template text of one item: the generation prompt, or prompt + answer turn."""
        messages = self._messages(item, with_answer)
        if self.processor is not None and getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=not with_answer,
                                                      tokenize=False)
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template,
                                                  add_generation_prompt=not with_answer, tokenize=False)

    def _adds_special_tokens(self, text: str) -> bool:
        """Like `processor.apply_chat_template(tokenize=True)`: no second BOS when the template writes one."""
        bos = self.tokenizer.bos_token
        return not (bos and text.startswith(bos))

    def _encode_prompt(self, prompt: str, image: Image.Image | None) -> tuple[list[int], dict[str, Any]]:
        add = self._adds_special_tokens(prompt)
        if self.processor is not None:
            out = self.processor(text=[prompt], images=[image] if image is not None else None,
                                 add_special_tokens=add, return_tensors="pt")
            ids = out["input_ids"][0].tolist()
            return ids, {k: v for k, v in out.items() if k not in _TEXT_KEYS}
        vision: dict[str, Any] = {}
        text = prompt
        if image is not None:
            vision = dict(self.image_processor(images=[image], return_tensors="pt", **self._image_processor_kwargs()))
            if self.expands_image_tokens:
                text = prompt.replace(self.image_token, self._image_placeholder(vision), 1)
            vision = {k: v for k, v in vision.items() if k not in ("rows", "cols", "num_tiles")}
        return self.tokenizer(text, add_special_tokens=add)["input_ids"], vision

    def _answer_tail(self, prompt: str, full: str) -> str:
        if not full.startswith(prompt):
            raise MMUnlearnError(f"model {self.name!r}: the chat template's answer turn does not extend its "
                                 "generation prompt, so the answer cannot be teacher-forced")
        tail = full[len(prompt):]
        cuts = [tail.find(t) + len(t) for t in self._end_of_turn_strings if t in tail]
        if cuts:
            return tail[:min(cuts)]
        return tail.rstrip() + (self.tokenizer.eos_token or "")

    def encode(self, item: VLMInput, for_generation: bool) -> EncodedRow:
        """One row: prompt ids (image placeholders expanded) and, for teacher forcing, the answer ids.

        Rows are cached by (image pixels, question, answer, mode); a cached row is shared, never mutated.
        """
        if item.image is not None and not isinstance(item.image, Image.Image):
            raise ConfigError(f"VLMInput.image must be a PIL image or None, got {type(item.image).__name__}")
        if not self.encode_cache_size:
            return self._encode_uncached(item, for_generation)
        key = (_image_digest(item.image), item.question, None if for_generation else item.answer, for_generation)
        row = self._encode_cache.get(key)
        if row is None:
            row = self._encode_uncached(item, for_generation)
            self._encode_cache[key] = row
            if len(self._encode_cache) > self.encode_cache_size:
                self._encode_cache.popitem(last=False)
        else:
            self._encode_cache.move_to_end(key)
        return row

    def _encode_uncached(self, item: VLMInput, for_generation: bool) -> EncodedRow:
        prompt = self.render(item, with_answer=False)
        ids, vision = self._encode_prompt(prompt, item.image)
        if for_generation or item.answer is None:
            return EncodedRow(ids, None, vision)
        tail = self._answer_tail(prompt, self.render(item, with_answer=True))
        # Tokenise prompt and prompt+answer as text (placeholders unexpanded) and keep the common prefix, so
        # a token merging across the boundary is counted as answer; the prompt's image expansion is reused.
        add = self._adds_special_tokens(prompt)
        p_ids = self.tokenizer(prompt, add_special_tokens=add)["input_ids"]
        f_ids = self.tokenizer(prompt + tail, add_special_tokens=add)["input_ids"]
        common = 0
        for a, b in zip(p_ids, f_ids):
            if a != b:
                break
            common += 1
        keep = len(ids) - (len(p_ids) - common)
        answer = f_ids[common:]
        return EncodedRow(ids[:keep] + answer, keep, vision)

    def format(self, items: Sequence[VLMInput], for_generation: bool) -> VLMBatch:
        """Left-padded batch via the chat template; labels keep only answer tokens and end-of-turn.

        Text-only rows get no image tokens and no pixel values; pixel values come only from image rows, in
        row order. Families that cannot mix image and text-only rows (`can_mix_modalities`) raise here; the
        adapter's own methods split such batches internally.
        """
        if not items:
            raise ConfigError("format() needs at least one item")
        rows = [self.encode(item, for_generation) for item in items]
        kinds = {r.has_image for r in rows}
        if len(kinds) > 1 and not self.can_mix_modalities:
            raise MMUnlearnError(f"{type(self).__name__} cannot mix image and text-only rows in one batch; "
                                 "split them (answer_logprobs/generate/hidden_states do)")
        return self.collate(rows, teacher_forcing=not for_generation)

    def collate(self, rows: list[EncodedRow], teacher_forcing: bool) -> VLMBatch:
        width = max(len(r.input_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        spans, pads = [], []
        for b, row in enumerate(rows):
            pad = width - len(row.input_ids)
            pads.append(pad)
            ids[b, pad:] = torch.tensor(row.input_ids, dtype=torch.long)
            mask[b, pad:] = 1
            if teacher_forcing and row.answer_start is not None:
                start = pad + row.answer_start
                labels[b, start:] = ids[b, start:]
                spans.append((start, width))
            else:
                spans.append((width, width))
        inputs: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
        inputs.update(self._collate_vision(rows, pads))
        inputs.update(self._extra_inputs(ids, rows))
        if teacher_forcing:
            inputs["labels"] = labels
        return VLMBatch(self._to_device(inputs), spans, [r.has_image for r in rows])

    def _to_device(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device, dtype = self.device, self.dtype
        out = {}
        for key, value in inputs.items():
            value = torch.as_tensor(value)
            out[key] = value.to(device, dtype) if value.is_floating_point() else value.to(device)
        return out

    # ------------------------------------------------------------------ pixel-space views

    def image_views(self, batch: VLMBatch) -> list[torch.Tensor]:
        """Each image row's processed pixels as one normalised `[3, H, W]` image, in row order, for attacks that
        work in pixel space (PGD). Families whose rows hold several views of an image (tiles, crops) raise."""
        pixels = batch.inputs.get("pixel_values")
        n_images = sum(batch.has_image)
        if pixels is None or pixels.dim() != 4 or pixels.shape[1] != 3 or pixels.shape[0] != n_images:
            shape = None if pixels is None else tuple(pixels.shape)
            raise MMUnlearnError(f"{type(self).__name__}: the pixel values {shape} of {n_images} image rows are not "
                                 "one [3, H, W] view per image")
        return list(pixels.unbind(0))

    def with_image_views(self, batch: VLMBatch, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """`batch`'s model inputs with its pixel values rebuilt from `views` (`image_views`' layout), so that
        gradients reach the views."""
        return {**batch.model_inputs(), "pixel_values": torch.stack(list(views)).to(self.dtype)}

    # ------------------------------------------------------------------ model access

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def text_config(self) -> Any:
        config = self.model.config
        return config.get_text_config() if hasattr(config, "get_text_config") else config

    @property
    def num_layers(self) -> int:
        return len(self.module_names().layers)

    @contextlib.contextmanager
    def each_batch(self, hook: Callable[[list[int]], None]) -> Iterator[None]:
        """Inside, `hook(item indices)` runs before every batch the adapter puts through the model.

        One merged call can then serve rows meant for different model variants (e.g. one edit delta per
        fact, chosen per row): the hook routes each batch's rows just before its forward pass.
        """
        if self._batch_hook is not None:
            raise MMUnlearnError("each_batch does not nest: a batch hook is already set")
        self._batch_hook = hook
        try:
            yield
        finally:
            self._batch_hook = None

    def _groups(self, n: int, has_image: Sequence[bool]) -> Iterator[list[int]]:
        """Index groups of at most `batch_size`; split by modality where the family cannot mix."""
        for start in range(0, n, self.batch_size):
            chunk = list(range(start, min(n, start + self.batch_size)))
            parts = [chunk] if self.can_mix_modalities else \
                [p for p in ([i for i in chunk if has_image[i] == kind] for kind in (True, False)) if p]
            for part in parts:
                if self._batch_hook is not None:
                    self._batch_hook(part)
                yield part

    @functools.cached_property
    def _keeps_logits(self) -> bool:
        return "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def _forward_kwargs(self) -> dict[str, Any]:
        return {"logits_to_keep": 1} if self._keeps_logits else {}

    def answer_logits(self, batch: VLMBatch) -> tuple[dict[str, Any], int]:
        """Forward kwargs that compute logits only where they predict `batch`'s answers, and the sequence
        position of the first logit kept.

        Rows are left-padded with the answer last, so the last `width - earliest answer start + 1` positions
        cover every answer; the lm_head and the log-softmax over the rest of the prompt (most of a short-answer
        row) are skipped. A model without `logits_to_keep`, or a batch whose answers do not all end the row,
        keeps every position.
        """
        width = int(batch.inputs["input_ids"].shape[1])
        if not batch.answer_spans or not self._keeps_logits or any(end != width for _, end in batch.answer_spans):
            return {}, 0
        first = min(start for start, _ in batch.answer_spans) - 1
        return {"logits_to_keep": width - first}, first

    # ------------------------------------------------------------------ scoring and probing

    @torch.no_grad()
    def answer_logprobs(self, items: Sequence[VLMInput]) -> list[AnswerScore]:
        """Per-token log-probs of each answer (and its end-of-turn) given the generation prompt, batched."""
        missing = [i for i, it in enumerate(items) if it.answer is None]
        if missing:
            raise ConfigError(f"answer_logprobs needs answers; items {missing[:5]} have none")
        results: list[AnswerScore | None] = [None] * len(items)
        for group in self._groups(len(items), [it.image is not None for it in items]):
            batch = self.format([items[i] for i in group], for_generation=False)
            kept, offset = self.answer_logits(batch)
            with self.reading_last(kept.get("logits_to_keep", batch.inputs["input_ids"].shape[1])):
                logits = self.model(**batch.model_inputs(), **kept).logits
            ids = batch.inputs["input_ids"]
            for b, i in enumerate(group):
                start, end = batch.answer_spans[b]
                target = ids[b, start:end]
                logp = logits[b, start - 1 - offset:end - 1 - offset].float().log_softmax(-1)
                token_lp = logp.gather(-1, target[:, None].to(logp.device))[:, 0].cpu()
                tid = target.tolist()
                results[i] = AnswerScore(tid, self.tokenizer.convert_ids_to_tokens(tid), token_lp.tolist(),
                                         float(token_lp.sum()))
        return results  # type: ignore[return-value]

    def _last_prompt_states(self, batch: VLMBatch) -> list[torch.Tensor]:
        with self.reading_last():
            out = self.model(**batch.model_inputs(), output_hidden_states=True, **self._forward_kwargs())
        states = None if out.hidden_states is None else self._complete_hidden_states(list(out.hidden_states))
        expected = self.num_layers + 1
        if states is None or len(states) != expected:
            got = None if states is None else len(states)
            raise MMUnlearnError(f"model {self.name!r}: expected {expected} hidden states, got {got}")
        return [h[:, -1, :] for h in states]

    def _probe(self, items: Sequence[VLMInput], hidden: bool, lens: bool,
               resume: Sequence[LayerInput] | MlpDownRows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass per batch; the hidden states and/or the logit lens of it (empty tensors if not asked).

        With `resume` (one `LayerInput` per item, all at one layer; or `MlpDownRows`) each batch starts at that
        layer (or just above the stored down-projection) from the stored inputs; the entries below it come from
        the stored last-position states.
        """
        n_resume = len(resume.rows) if isinstance(resume, MlpDownRows) else None if resume is None else len(resume)
        if n_resume is not None and n_resume != len(items):
            raise MMUnlearnError(f"resume: {n_resume} layer inputs for {len(items)} items")
        order: list[int] = []
        h_blocks: list[torch.Tensor] = []
        l_blocks: list[torch.Tensor] = []
        with torch.no_grad():
            for group in self._groups(len(items), [it.image is not None for it in items]):
                if isinstance(resume, MlpDownRows):
                    mine = [resume.rows[i] for i in group]
                    # Without vision inputs only the text part runs, and the store has its tokens.
                    if self.resume_keeps_vision:
                        batch = self.format([items[i] for i in group], for_generation=True)
                    else:
                        text = resume.store.text_batch(mine)
                        batch = VLMBatch(self._to_device(self._text_part(text.inputs)), text.answer_spans,
                                         text.has_image)
                    states = self._states_above_mlp_down(batch, resume.store, mine)
                elif resume is None:
                    batch = self.format([items[i] for i in group], for_generation=True)
                    states = self._last_prompt_states(batch)
                else:
                    batch = self.format([items[i] for i in group], for_generation=True)
                    mine = [resume[i] for i in group]
                    if not self.resume_keeps_vision:
                        batch = VLMBatch(self._text_part(batch.inputs), batch.answer_spans, batch.has_image)
                    with self._resumed(batch, mine):
                        states = self._last_prompt_states(batch)
                    # Entries below the layer: the stored ones (the skipped layers only passed their input on).
                    layer = mine[0].layer
                    below = torch.stack([r.lower for r in mine]).to(states[0].device, states[0].dtype)
                    states[:layer] = below.unbind(1)[:layer]
                stacked = torch.stack(states, dim=1)  # [batch, n_layers + 1, hidden]
                if hidden:
                    h_blocks.append(stacked.float().cpu())
                if lens:
                    l_blocks.append(self.lens_logprobs(stacked, range(len(states))).cpu())
                order += group
        # Rows back in item order (groups may split items by modality).
        back = None if order == list(range(len(items))) else torch.argsort(torch.tensor(order))

        def in_order(blocks: list[torch.Tensor]) -> torch.Tensor:
            if not blocks:
                return torch.empty(0)
            rows = torch.cat(blocks)
            return rows if back is None else rows[back]

        return in_order(h_blocks), in_order(l_blocks)

    # ------------------------------------------------------------------ resuming at a layer

    def _decoder_layer(self, index: int) -> nn.Module:
        return self.model.get_submodule(self.module_names().layers[index])

    def layer_of(self, module_name: str) -> int | None:
        """The decoder layer a module belongs to (None: not inside a decoder layer)."""
        for i, layer in enumerate(self.module_names().layers):
            if module_name == layer or module_name.startswith(layer + "."):
                return i
        return None

    def layer_inputs(self, items: Sequence[VLMInput], layer: int) -> list[LayerInput]:
        """The input of decoder `layer` for every item's prompt on the current model, for later `resume`."""
        if not self.resumes_at_layer:
            raise MMUnlearnError(f"{type(self).__name__} cannot resume a forward pass at a layer")
        if not 1 <= layer < self.num_layers:
            raise ConfigError(f"layer_inputs: layer {layer} is outside 1..{self.num_layers - 1}")
        out: list[LayerInput | None] = [None] * len(items)
        captured: dict[str, torch.Tensor] = {}

        def keep(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured["input"] = (args[0] if args else kwargs["hidden_states"]).detach()

        handle = self._decoder_layer(layer).register_forward_pre_hook(keep, with_kwargs=True)
        try:
            for group, _, lower, lengths in self._prompt_passes(items, layer):
                width = captured["input"].shape[1]
                for b, i in enumerate(group):
                    out[i] = LayerInput(layer, captured["input"][b, width - lengths[b]:].cpu(), lower[b])
        finally:
            handle.remove()
        return out  # type: ignore[return-value]

    def _prompt_passes(self, items: Sequence[VLMInput],
                       layer: int) -> Iterator[tuple[list[int], VLMBatch, torch.Tensor, list[int]]]:
        """One forward pass (no gradients) per adapter batch of the items' generation prompts, for hooks the
        caller has set: each batch's item indices, the batch, its last-position hidden-state entries
        0..`layer` `[batch, layer + 1, hidden]` (fp32, CPU) and its prompts' lengths."""
        with torch.no_grad():
            for group in self._groups(len(items), [it.image is not None for it in items]):
                batch = self.format([items[i] for i in group], for_generation=True)
                states = self._last_prompt_states(batch)
                lower = torch.stack(states[:layer + 1], dim=1).float().cpu()
                yield group, batch, lower, [int(n) for n in batch.inputs["attention_mask"].sum(-1).tolist()]

    def _text_part(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A batch's inputs without its vision tensors: what a forward resumed above the vision tower reads."""
        return {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "labels")} | \
            self._inputs_from_ids(inputs["input_ids"])

    def _residual_before_mlp(self, layer: int) -> nn.Module | None:
        """The module whose input is decoder `layer`'s residual after attention, where the MLP's output is
        added: `post_attention_layernorm` in Llama-style layers; `pre_feedforward_layernorm` in layers that norm
        the attention and MLP outputs before adding them ("sandwich" norms: Gemma 2 and 3). None where the layer
        is built otherwise."""
        sandwich = self._layer_part(layer, "pre_feedforward_layernorm")
        return sandwich if sandwich is not None else self._layer_part(layer, "post_attention_layernorm")

    def _mlp_output(self, layer: int, down_output: torch.Tensor) -> torch.Tensor:
        """What decoder `layer` adds to its residual from its down-projection's output: the output itself, or
        its `post_feedforward_layernorm` in sandwich-norm layers."""
        norm = self._layer_part(layer, "post_feedforward_layernorm")
        return down_output if norm is None else norm(down_output)

    def _layer_part(self, layer: int, name: str) -> nn.Module | None:
        """Decoder `layer`'s direct submodule `name`, or None where the layer has none."""
        part = getattr(self._decoder_layer(layer), name, None)
        return part if isinstance(part, nn.Module) else None

    def resumes_after_mlp_down(self, layer: int) -> bool:
        """Whether `mlp_down_inputs` and resuming above them serve decoder `layer` (a layer below the last)."""
        return self.resumes_at_layer and 0 <= layer < self.num_layers - 1 and \
            self._residual_before_mlp(layer) is not None

    def mlp_down_inputs(self, items: Sequence[VLMInput], layer: int) -> MlpDownStore:
        """The residual and the down-projection input of decoder `layer` for every item's prompt on the current
        model (row k: item k), for `hidden_states(..., resume=store.rows(...))`."""
        if not self.resumes_after_mlp_down(layer):
            raise MMUnlearnError(f"{type(self).__name__} cannot resume after the MLP of layer {layer}")
        norm = self._residual_before_mlp(layer)
        down = self.model.get_submodule(self.module_names().mlp_down[layer])
        captured: dict[str, torch.Tensor] = {}

        def keep(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple) -> None:
                captured[name] = args[0].detach()
            return hook

        handles = [norm.register_forward_pre_hook(keep("residual")), down.register_forward_pre_hook(keep("down"))]
        rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None] = [None] * len(items)
        try:
            for group, batch, lower, lengths in self._prompt_passes(items, layer):
                width = captured["residual"].shape[1]
                ids = batch.inputs["input_ids"]
                for b, i in enumerate(group):
                    start = width - lengths[b]
                    rows[i] = (captured["residual"][b, start:].cpu(), captured["down"][b, start:].cpu(), lower[b],
                               ids[b, start:].cpu())
        finally:
            for handle in handles:
                handle.remove()
        done = [r for r in rows if r is not None]
        width = max(r[0].shape[0] for r in done)
        residual = torch.zeros((len(done), width, done[0][0].shape[-1]), dtype=done[0][0].dtype)
        down_input = torch.zeros((len(done), width, done[0][1].shape[-1]), dtype=done[0][1].dtype)
        input_ids = torch.full((len(done), width), self.pad_token_id, dtype=torch.long)
        for k, (res, inp, _, ids) in enumerate(done):
            residual[k, width - res.shape[0]:] = res
            down_input[k, width - inp.shape[0]:] = inp
            input_ids[k, width - ids.shape[0]:] = ids
        return MlpDownStore(layer, residual, down_input, torch.tensor([r[0].shape[0] for r in done]),
                            torch.stack([r[2] for r in done]), input_ids)

    def _states_above_mlp_down(self, batch: VLMBatch, store: MlpDownStore, rows: Sequence[int]) -> list[torch.Tensor]:
        """`_last_prompt_states` of a text-only `batch` whose prompts are `rows` of `store`, on a model that
        differs from the store's only in that down-projection (the current one, routed like any call)."""
        index = torch.tensor(list(rows), dtype=torch.long)
        mask = batch.inputs["attention_mask"]
        if not torch.equal(store.lengths[index], mask.sum(-1).cpu()):
            raise MMUnlearnError("resume: a row's prompt positions differ from its stored inputs' (another prompt?)")
        width, stored_width = mask.shape[1], store.residual.shape[1]
        down = self.model.get_submodule(self.module_names().mlp_down[store.layer])
        device = next(down.parameters()).device
        layer_input = store.residual[index, stored_width - width:].to(device) + \
            self._mlp_output(store.layer, down(store.down_input[index, stored_width - width:].to(device)))
        with self._replaying(store.layer + 1, layer_input):
            states = self._last_prompt_states(batch)
        # Entries 0..layer: the stored ones (the skipped layers only passed their input on).
        below = store.lower[index].to(states[0].device, states[0].dtype)
        states[:store.layer + 1] = below.unbind(1)
        return states

    @contextlib.contextmanager
    def _resumed(self, batch: VLMBatch, inputs: Sequence[LayerInput]) -> Iterator[None]:
        """Inside, the decoder layers below `inputs[0].layer` pass their input through untouched, and the one
        just below it returns the stored inputs (left-padded like `batch`)."""
        if not self.resumes_at_layer:
            raise MMUnlearnError(f"{type(self).__name__} cannot resume a forward pass at a layer")
        layer = inputs[0].layer
        if any(r.layer != layer for r in inputs) or not 1 <= layer < self.num_layers:
            raise MMUnlearnError("resume: every layer input must come from one layer in 1..num_layers - 1")
        mask = batch.inputs["attention_mask"]
        width = mask.shape[1]
        stored = torch.zeros((len(inputs), width, inputs[0].states.shape[-1]), dtype=self.dtype)
        for b, (r, n) in enumerate(zip(inputs, mask.sum(-1).tolist())):
            if r.states.shape[0] != int(n):
                raise MMUnlearnError(f"resume: row {b} has {int(n)} prompt positions but its stored layer input "
                                     f"{r.states.shape[0]} (inputs of another prompt?)")
            stored[b, width - int(n):] = r.states
        with self._replaying(layer, stored.to(next(self._decoder_layer(layer).parameters()).device)):
            yield

    @contextlib.contextmanager
    def reading_last(self, keep: int = 1) -> Iterator[None]:
        """Inside, the last decoder layer's MLP runs at the last `keep` positions only (the others get zeros).

        For forward passes that read nothing but those positions' outputs (the last position's hidden states and
        logit lens, the next token, the logits of answers that end every left-padded row) and the KV cache: the
        MLP acts on each position alone and nothing after it mixes positions, so the kept positions come out as
        before (and so do their gradients), and the cache holds keys and values computed before the MLP. The
        last layer's MLP at every other position, about a fifth of a prompt's decoder arithmetic for a 4-layer
        model, is skipped.
        """
        mlp = dict(self.model.named_modules()).get(f"{self.module_names().layers[-1]}.mlp")
        if mlp is None:
            yield
            return
        whole = mlp.forward

        def last_only(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if x.dim() != 3 or x.shape[1] <= keep:
                return whole(x, *args, **kwargs)
            kept = whole(x[:, -keep:], *args, **kwargs)
            return torch.cat([kept.new_zeros(x.shape[0], x.shape[1] - keep, kept.shape[-1]), kept], dim=1)

        mlp.forward = last_only  # type: ignore[method-assign]
        try:
            yield
        finally:
            del mlp.forward

    @contextlib.contextmanager
    def _replaying(self, layer: int, stored: torch.Tensor) -> Iterator[None]:
        """Inside, decoder layers below `layer` pass their input through and the one just below it returns
        `stored`, the input of `layer` for the batch about to run."""

        def through(*args: Any, **kwargs: Any) -> torch.Tensor:
            return args[0] if args else kwargs["hidden_states"]

        def replay(*args: Any, **kwargs: Any) -> torch.Tensor:
            return stored

        skipped = [self._decoder_layer(i) for i in range(layer)]
        for i, module in enumerate(skipped):
            module.forward = replay if i == layer - 1 else through  # type: ignore[method-assign]
        try:
            yield
        finally:
            for module in skipped:
                del module.forward

    def from_layer(self, batch: VLMBatch, layer: int | None) -> VLMBatch:
        """`batch`, to be run (by `forward_batch`) from decoder `layer` up: that layer's input is computed now,
        once, without gradients.

        For training a change at `layer` or above over many steps (an edit): each step then skips the layers
        below and, where the image enters only through the residual stream, the vision tower, with the same
        result. The hidden-state entries below `layer` of such a forward are not the model's. A family that
        cannot resume at a layer (`resumes_at_layer`), or `layer` None or 0, gives `batch` back, run whole.
        """
        if layer is None or layer == 0:
            return batch
        if not 1 <= layer < self.num_layers:
            raise ConfigError(f"from_layer: layer {layer} is outside 1..{self.num_layers - 1}")
        if not self.resumes_at_layer:
            return batch
        captured: list[torch.Tensor] = []

        def keep(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append((args[0] if args else kwargs["hidden_states"]).detach())
            raise _LayerReached  # nothing above the layer is needed

        handle = self._decoder_layer(layer).register_forward_pre_hook(keep, with_kwargs=True)
        try:
            with torch.no_grad():
                self.model(**batch.model_inputs())
        except _LayerReached:
            pass
        finally:
            handle.remove()
        inputs = batch.inputs if self.resume_keeps_vision else self._text_part(batch.inputs)
        return VLMBatch(inputs, batch.answer_spans, batch.has_image, layer, captured[0])

    def forward_batch(self, batch: VLMBatch, with_labels: bool = False, **kwargs: Any) -> Any:
        """`model(**batch.model_inputs(with_labels), **kwargs)`; a batch from `from_layer` runs from its layer up."""
        inputs = batch.model_inputs(with_labels)
        if batch.layer_input is None:
            return self.model(**inputs, **kwargs)
        with self._replaying(int(batch.layer), batch.layer_input):
            return self.model(**inputs, **kwargs)

    def hidden_states(self, items: Sequence[VLMInput],
                      resume: Sequence[LayerInput] | MlpDownRows | None = None) -> torch.Tensor:
        """Residual stream at the last prompt position for every layer: [batch, n_layers + 1, hidden], fp32.

        `resume`: one `LayerInput` per item, taken from a model that equals the current one below their layer
        (e.g. before an edit of that layer or above); the forward then runs only from that layer up. Or rows of
        an `MlpDownStore` from a model that differs from the current one only in that down-projection.
        """
        return self._probe(items, hidden=True, lens=False, resume=resume)[0]

    def logit_lens(self, items: Sequence[VLMInput]) -> torch.Tensor:
        """Log-probs over the vocabulary read from every layer: [batch, n_layers + 1, vocab], fp32.

        Computed from the same forward pass as `hidden_states`: the family's final norm and lm_head on every
        entry except the last, which the model has already normed, so it gets lm_head only.
        """
        return self._probe(items, hidden=False, lens=True)[1]

    def hidden_and_lens(self, items: Sequence[VLMInput]) -> tuple[torch.Tensor, torch.Tensor]:
        """`hidden_states` and `logit_lens` of the same single forward pass, for attacks that read both."""
        return self._probe(items, hidden=True, lens=True)

    @functools.cached_property
    def _last_is_normed(self) -> bool:
        for cfg in (self.text_config, self.model.config):
            flag = getattr(cfg, "tie_last_hidden_states", None)
            if flag is not None:
                return bool(flag)
        return True

    def lens_logprobs(self, states: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        """Logit lens of hidden states [batch, n, hidden] taken at hidden-state `indices`: [batch, n, vocab].

        The family's final norm and lm_head, except on the last hidden state, which the model has already
        normed. One norm and one head call over all states (the norm acts on each vector alone); gradients
        flow, so defenses train through it.
        """
        names = self.module_names()
        norm = self.model.get_submodule(names.final_norm)
        head = self.model.get_output_embeddings()
        last = self.num_layers if self._last_is_normed else None
        states = states.to(next(norm.parameters()).device)
        skip = torch.tensor([i == last for i in indices], device=states.device)
        normed = torch.where(skip[None, :, None], states, norm(states))
        return self._lens_logits(head(normed.to(head.weight.device))).float().log_softmax(-1)

    def _lens_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """What the model does to the lm_head's output before its logits (a family's soft-cap), for the lens."""
        return logits

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, items: Sequence[VLMInput], max_new_tokens: int = 32, do_sample: bool = False,
                 seed: int | None = None, temperature: float = 1.0, top_p: float = 1.0,
                 seeds: Sequence[int] | None = None) -> list[str]:
        """Greedy decoding, or one sample per item (see `sample`); stops at end of turn.

        Sampled items draw from their own streams (`seeds`, one per item; default: derived from `seed` and
        the item's position), so an item's text does not depend on the batch it shares.
        """
        if do_sample:
            from mmunlearn.models.row_sampling import row_seeds

            if seeds is None:
                base = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed)
                seeds = row_seeds(base, len(items))
            if len(seeds) != len(items):
                raise ConfigError(f"generate: {len(seeds)} seeds for {len(items)} items")
            texts = self.sample(items, [[s] for s in seeds], max_new_tokens, temperature, top_p)
            return [t[0] for t in texts]
        results: list[str | None] = [None] * len(items)
        for group in self._groups(len(items), [it.image is not None for it in items]):
            batch = self.format([items[i] for i in group], for_generation=True)
            for i, text in zip(group, self._decode_batch(batch.model_inputs(), max_new_tokens, rows=group)):
                results[i] = text
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def sample(self, items: Sequence[VLMInput], seeds: Sequence[Sequence[int]], max_new_tokens: int = 32,
               temperature: float = 1.0, top_p: float = 1.0) -> list[list[str]]:
        """`len(seeds[i])` samples of item i, sample j drawn from its own stream `seeds[i][j]`.

        Each draw depends on its seed alone (`row_sampling`), never on the batch, so merging many callers'
        requests into one call gives each the texts it would get alone, up to floating-point noise from
        padding. Families with `shares_prompt_prefill` run each prompt once and copy its KV cache to its
        samples (the prompt is most of the compute when answers are short).
        """
        if len(seeds) != len(items):
            raise ConfigError(f"sample: {len(seeds)} seed lists for {len(items)} items")
        from mmunlearn.models.row_sampling import RowSeededSampler

        results: list[list[str]] = [[] for _ in items]
        for group in self._sample_groups(items, seeds):
            expanded = [i for i in group for _ in seeds[i]]
            if not expanded:
                continue
            flat_seeds = [s for i in group for s in seeds[i]]
            shared = self.shares_prompt_prefill and len(expanded) > len(group)
            batch = self.format([items[i] for i in (group if shared else expanded)], for_generation=True)
            width = batch.inputs["input_ids"].shape[1]
            sampler = RowSeededSampler(flat_seeds, width, temperature, top_p)
            repeat = None
            if shared:
                repeat = torch.tensor([k for k, i in enumerate(group) for _ in seeds[i]], device=self.device)
                self._route(group)
                if self._drops_rows():  # the loop prefills each prompt once and copies it to its samples
                    inputs = batch.model_inputs()
                else:
                    inputs = self._prefilled(batch, repeat)
                    repeat = None
                    self._route(expanded)
            else:
                inputs = batch.model_inputs()
                self._route(expanded)
            texts = self._decode_batch(inputs, max_new_tokens, sampler, rows=expanded, expand=repeat)
            for i, text in zip(expanded, texts):
                results[i].append(text)
        return results

    def _drops_rows(self) -> bool:
        from mmunlearn.models.compact_decoding import plain_generation_config

        return self.drops_finished_rows and plain_generation_config(getattr(self.model, "generation_config", None))

    def _sample_groups(self, items: Sequence[VLMInput], seeds: Sequence[Sequence[int]]) -> Iterator[list[int]]:
        """Item groups of at most `batch_size` samples in all (one item at least); split by modality where the
        family cannot mix."""
        group: list[int] = []
        rows = 0
        chunks = []
        for i, item_seeds in enumerate(seeds):
            if group and rows + len(item_seeds) > self.batch_size:
                chunks.append(group)
                group, rows = [], 0
            group.append(i)
            rows += len(item_seeds)
        if group:
            chunks.append(group)
        for chunk in chunks:
            if self.can_mix_modalities:
                yield chunk
            else:
                for kind in (True, False):
                    part = [i for i in chunk if (items[i].image is not None) == kind]
                    if part:
                        yield part

    def _route(self, indices: list[int]) -> None:
        if self._batch_hook is not None:
            self._batch_hook(indices)

    def _prefilled(self, batch: VLMBatch, repeat: torch.Tensor) -> dict[str, Any]:
        """Generation inputs for rows `repeat` of `batch` with every prompt token but the last already in a
        KV cache: one forward per distinct prompt instead of one per sample."""
        inputs = batch.model_inputs()
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        # Positions exactly as `generate` derives them from the mask, so the cached keys match its own.
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        prefix = {k: (v[:, :-1] if k in _TOKEN_ALIGNED else v) for k, v in inputs.items()}
        with self.reading_last():  # only the cache is kept
            out = self.model(**prefix, position_ids=positions[:, :-1], use_cache=True, **self._forward_kwargs())
        cache = out[CACHE]
        cache.reorder_cache(repeat)
        return {"input_ids": ids[repeat], "attention_mask": mask[repeat], CACHE: cache}

    def _decode_batch(self, inputs: dict[str, Any], max_new_tokens: int, sampler: RowSeededSampler | None = None,
                      rows: list[int] | None = None, expand: torch.Tensor | None = None) -> list[str]:
        """Greedy decoding of prepared inputs (`sampler` turns it into row-seeded sampling), decoded.

        Families with `drops_finished_rows` decode in a loop that stops computing a row once it has stopped
        (`compact_decoding`), unless the model's generation config adds logits processors of its own; the
        others, and those, call `generate`. `rows`: the item index of each row, for the batch hook; `expand`
        (the loop only): row k decodes from prompt `expand[k]` of `inputs`.
        """
        from transformers import LogitsProcessorList

        from mmunlearn.models.compact_decoding import decode_dropping_finished

        if self._drops_rows():
            route = None if self._batch_hook is None or rows is None else \
                (lambda kept: self._route([rows[k] for k in kept]))
            tokens = decode_dropping_finished(self.model, inputs, max_new_tokens, self.stop_token_ids,
                                              self._forward_kwargs(), sampler, route, self.reading_last,
                                              expand)
            return [self._decode(row) for row in tokens]
        if expand is not None:
            raise MMUnlearnError("_decode_batch: expand needs the decoding loop that drops finished rows")
        width = inputs["input_ids"].shape[1]
        extra = {} if sampler is None else {"logits_processor": LogitsProcessorList([sampler])}
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                  eos_token_id=self.stop_token_ids, pad_token_id=self.pad_token_id, **extra)
        return [self._decode(row.tolist()) for row in out[:, width:]]

    def _decode(self, ids: list[int]) -> str:
        stops = set(self.stop_token_ids)
        cut = next((k for k, t in enumerate(ids) if t in stops), len(ids))
        return self.tokenizer.decode(ids[:cut], skip_special_tokens=True).strip()

    # ------------------------------------------------------------------ modules

    def module_names(self) -> ModuleNames:
        """Decoder layers, attention q/k/v/o and MLP down-projections per layer, vision tower and projector."""
        cached = getattr(self, "_module_names", None)
        if cached is not None:
            return cached
        modules = dict(self.model.named_modules())
        lm = self.language_model_path
        for path in (lm, self.vision_tower_path, self.projector_path, self.lm_head_path):
            if path not in modules:
                raise MMUnlearnError(f"model {self.name!r}: module {path!r} not found ({type(self).__name__})")
        n_layers = len(modules[f"{lm}.layers"])
        layers, attention, mlp_down = [], [], []
        for i in range(n_layers):
            layer = f"{lm}.layers.{i}"
            layers.append(layer)
            attn = next((f"{layer}.{a}" for a in ("self_attn", "cross_attn") if f"{layer}.{a}" in modules), None)
            projections = {}
            if attn is not None:
                for kind in ("q", "k", "v", "o"):
                    if f"{attn}.{kind}_proj" in modules:
                        projections[kind] = f"{attn}.{kind}_proj"
            attention.append(projections)
            if f"{layer}.mlp.down_proj" in modules:
                mlp_down.append(f"{layer}.mlp.down_proj")
        names = ModuleNames(language_model=lm, layers=layers, attention=attention, mlp_down=mlp_down,
                            final_norm=f"{lm}.norm", lm_head=self.lm_head_path, embed_tokens=f"{lm}.embed_tokens",
                            vision_tower=self.vision_tower_path, projector=self.projector_path)
        self._module_names = names
        return names

    def _params(self, path: str, exclude: str | None = None) -> list[nn.Parameter]:
        module = self.model.get_submodule(path)
        skip = {id(p) for p in self.model.get_submodule(exclude).parameters()} if exclude and \
            exclude.startswith(path + ".") else set()
        return [p for p in module.parameters() if id(p) not in skip]

    def freeze_vision(self, include_projector: bool = False) -> int:
        """Stop gradients into the vision tower (and the projector if asked); returns parameters frozen."""
        frozen = self._params(self.vision_tower_path, exclude=self.projector_path)
        if include_projector:
            frozen += self._params(self.projector_path)
        for p in frozen:
            p.requires_grad_(False)
        return sum(p.numel() for p in frozen)

    # ------------------------------------------------------------------ accounting

    def token_counts(self, items: Sequence[VLMInput]) -> list[TokenCount]:
        """Text vs image tokens per example (answer included when given) and vision-encoder positions."""
        counts = []
        for item in items:
            row = self.encode(item, for_generation=item.answer is None)
            image = sum(1 for t in row.input_ids if t == self.image_token_id) if self.expands_image_tokens else 0
            positions = self._vision_positions(row.vision) if row.has_image else 0
            counts.append(TokenCount(text=len(row.input_ids) - image, image=image, vision_positions=positions))
        return counts

    def flops(self, items: Sequence[VLMInput], backward: bool) -> list[FlopCount]:
        """Per-example FLOPs: dense matmuls at 2 FLOPs per parameter per token, plus causal attention.

        language forward = 2 * P_lm * T + 2 * n_layers * T^2 * d_model, with T the example's tokens (text and
        image), P_lm the decoder's parameters without the input embedding plus the lm_head, and the T^2 term
        counting QK^T and AV under a causal mask. vision forward = 2 * P_tower * V + 2 * P_projector * I,
        with V the vision-encoder positions and I the image tokens. `backward=True` adds twice the forward
        cost of every part gradients pass through: always the language model; the vision tower only if it has
        trainable parameters (after `freeze_vision` it has none), the projector if it or the tower trains.
        """
        p_lm = sum(p.numel() for p in self._params(self.language_model_path))
        p_lm -= self.model.get_input_embeddings().weight.numel()
        p_lm += self.model.get_output_embeddings().weight.numel()
        tower = self._params(self.vision_tower_path, exclude=self.projector_path)
        projector = self._params(self.projector_path)
        p_tower, p_proj = sum(p.numel() for p in tower), sum(p.numel() for p in projector)
        tower_trains = any(p.requires_grad for p in tower)
        proj_trains = tower_trains or any(p.requires_grad for p in projector)
        n_layers, d_model = self.num_layers, int(self.text_config.hidden_size)
        out = []
        for count in self.token_counts(items):
            t = count.total
            language = 2.0 * p_lm * t + 2.0 * n_layers * t * t * d_model
            tower_f = 2.0 * p_tower * count.vision_positions
            # The projector maps vision features to image tokens; cross-attention models have no image tokens
            # in the sequence, so their projector runs over the vision positions.
            proj_f = 2.0 * p_proj * (count.image if count.image else count.vision_positions)
            if backward:
                language *= 3.0
                tower_f *= 3.0 if tower_trains else 1.0
                proj_f *= 3.0 if proj_trains else 1.0
            out.append(FlopCount(text_tokens=count.text, image_tokens=count.image,
                                 vision_positions=count.vision_positions, language=language,
                                 vision=tower_f + proj_f, backward=backward))
        return out

    # ------------------------------------------------------------------ token ids

    def _config_image_token_id(self) -> int | None:
        config = self.model.config
        for key in ("image_token_id", "image_token_index"):
            value = getattr(config, key, None)
            if value is not None:
                return int(value)
        return None

    def _image_token_string(self) -> str:
        token = getattr(self.processor, "image_token", None)
        if token:
            return str(token)
        if self.image_token_id is not None:
            text = self.tokenizer.convert_ids_to_tokens(self.image_token_id)
            if text:
                return str(text)
        return self.default_image_token

    def _pad_token_id(self) -> int:
        tok = self.tokenizer
        for value in (tok.pad_token_id, getattr(self.text_config, "pad_token_id", None), tok.eos_token_id):
            if value is not None:
                return int(value)
        return 0

    def _stop_token_ids(self) -> list[int]:
        ids: list[int] = []
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        candidates: list[Any] = [self.tokenizer.eos_token_id]
        candidates += gen_eos if isinstance(gen_eos, list) else [gen_eos]
        candidates += [self.tokenizer.convert_tokens_to_ids(t) for t in self._eot_tokens()]
        for value in candidates:
            if value is not None and int(value) not in ids:
                ids.append(int(value))
        return ids


# ---------------------------------------------------------------------- helpers


def _image_digest(image: Image.Image | None) -> tuple | None:
    """A key for an image's content: mode, size and a hash of its pixels."""
    if image is None:
        return None
    return image.mode, image.size, hashlib.blake2b(image.tobytes(), digest_size=16).digest()


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} not supported; use one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def _read_chat_template(path_or_id: str, common: dict) -> str | None:
    """A processor-level chat template saved next to the tokenizer (chat_template.jinja / .json)."""
    from transformers.utils import cached_file

    kwargs = {k: v for k, v in common.items() if k == "local_files_only"}
    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            found = cached_file(path_or_id, name, _raise_exceptions_for_missing_entries=False,
                                _raise_exceptions_for_connection_errors=False, **kwargs)
        except OSError:
            found = None
        if found:
            text = Path(found).read_text(encoding="utf-8")
            return json.loads(text).get("chat_template") if name.endswith(".json") else text
    return None


# ---------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[VLMAdapter]] = {}


def register_adapter(*model_types: str) -> Callable[[type[VLMAdapter]], type[VLMAdapter]]:
    """Class decorator: serve the given config `model_type`s with this adapter."""
    if not model_types:
        raise ConfigError("register_adapter needs at least one model_type")

    def wrap(cls: type[VLMAdapter]) -> type[VLMAdapter]:
        for model_type in model_types:
            if model_type in _REGISTRY and _REGISTRY[model_type] is not cls:
                raise ConfigError(f"model_type {model_type!r} already served by {_REGISTRY[model_type].__name__}")
            _REGISTRY[model_type] = cls
        cls.model_types = tuple(model_types)
        return cls

    return wrap


def _load_families() -> None:
    importlib.import_module("mmunlearn.models.adapters")


def known_families() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def adapter_class(model_type: str) -> type[VLMAdapter]:
    """The adapter registered for `model_type`; a one-line error with a suggestion otherwise."""
    _load_families()
    if model_type in _REGISTRY:
        return _REGISTRY[model_type]
    known = sorted(_REGISTRY)
    raise MMUnlearnError(f"no adapter for model_type {model_type!r}; known families: {', '.join(known)}"
                         f"{did_you_mean(model_type, known)}")


def _looks_local(path: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else (absolute, relative, deeper) is a directory."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or (os.sep != "/" and os.sep in path) \
        or os.path.exists(os.path.expanduser(path))


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:  # pragma: no cover
        pass
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or \
        os.environ.get("TRANSFORMERS_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def load_config(path_or_id: str, trust_remote_code: bool = False, local_files_only: bool | None = None) -> Any:
    """The model's config, with one-line errors for a missing directory or an unreachable hub model."""
    from transformers import AutoConfig

    path_or_id = str(path_or_id)
    if _looks_local(path_or_id):
        local = os.path.expanduser(path_or_id)
        if not os.path.isdir(local):
            raise MMUnlearnError(f"model directory not found: {path_or_id}")
        config_file = os.path.join(local, "config.json")
        if not os.path.isfile(config_file):
            raise MMUnlearnError(f"model directory {path_or_id} has no config.json")
        try:
            model_type = json.loads(Path(config_file).read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError) as exc:
            raise MMUnlearnError(f"cannot read {config_file}: {one_line(exc)}") from None
        if model_type:
            adapter_class(str(model_type))  # an unknown family fails here, before transformers parses the config
        path_or_id = local
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    try:
        return AutoConfig.from_pretrained(path_or_id, **kwargs)
    except (OSError, ValueError) as exc:
        unreachable = any(word in str(exc).lower() for word in ("connect", "offline", "local cache", "resolve host"))
        if local_files_only or _offline() or unreachable:
            raise MMUnlearnError(f"model {path_or_id!r} is not available offline: no local directory and no copy "
                                 "in the Hugging Face cache (download it where the hub is reachable, or pass a "
                                 "local directory)") from None
        raise MMUnlearnError(f"cannot load the config of model {path_or_id!r}: {one_line(exc)}") from None


def load_adapter(path_or_id: str | os.PathLike, dtype: str = "float32", device_map: Any = None,
                 trust_remote_code: bool = False, *, local_files_only: bool | None = None,
                 batch_size: int = 8) -> VLMAdapter:
    """Load a VLM from a local directory or hub id; the config's `model_type` picks the family adapter.

    Weights load from safetensors only; `trust_remote_code` stays off unless asked; `device_map` is passed
    to `from_pretrained` (None: CPU, "auto": spread over the visible GPUs, {"": device}: one device).
    """
    path = str(path_or_id)
    resolve_dtype(dtype)
    config = load_config(path, trust_remote_code=trust_remote_code, local_files_only=local_files_only)
    cls = adapter_class(str(getattr(config, "model_type", "")))
    if _looks_local(path):
        path = os.path.expanduser(path)
    return cls.from_pretrained(path, config, dtype=dtype, device_map=device_map,
                               trust_remote_code=trust_remote_code, local_files_only=local_files_only,
                               batch_size=batch_size)
