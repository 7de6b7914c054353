"""PaliGemma and PaliGemma 2 (`paligemma`): SigLIP tower -> linear projector -> Gemma (1) or Gemma 2 decoder.

PaliGemma is a prefix-LM, not a chat model, and its checkpoints carry no chat template: `PaliGemmaProcessor`
writes the prefix `<image>` x `image_seq_length` + `<bos>` + prompt + `"\\n"` and, for training, the suffix
(the answer) + `<eos>`, tokenised apart from the prefix (a text pair). The adapter renders the same text with
a built-in template and tokenises prefix and suffix apart as well, so a row is the processor's row. One image
fills one token per SigLIP patch (no CLS, no pooling: 256 for 224 px, patch 14).

`token_type_ids` (0 on the prefix, 1 on the suffix) drive the attention: the prefix, image and prompt, attends
both ways; the suffix causally. Every batch carries them (zeros on a generation prompt, ones from the answer
on), and a forward resumed above the vision tower keeps the batch's own. Because every prefix position reads
the last one, a KV cache of all prompt positions but the last cannot be reused: samples of one prompt share its
prefill only in the decoding loop, which prefills whole prompts.

Text-only rows: the processor refuses them, the model does not; the adapter writes them as the processor
writes an image row, without image tokens (`<bos>` + prompt + `"\\n"`). PaliGemma was trained with an image in
every prefix, so such rows are outside its training distribution.

PaliGemma 2's Gemma 2 decoder caps its logits (`final_logit_softcapping`: cap * tanh(logits / cap)); the logit
lens applies the same cap, so its last layer is the model's own output. Its layers norm the attention and MLP
outputs before adding them to the residual ("sandwich" norms), as Gemma 3's do.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch import nn

from mmunlearn.models.adapters.base import EncodedRow, VLMAdapter, VLMBatch, VLMInput, register_adapter

# PaliGemmaProcessor's layout as a template: image tokens, BOS, the prompt and a newline; the answer and EOS.
PALIGEMMA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ image_token | default('<image>') }}{% endif %}{% endfor %}{{ bos_token }}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{{ '\\n' }}{% else %}{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{{ eos_token }}{% endif %}{% endfor %}"
)


@register_adapter("paligemma")
class PaliGemmaAdapter(VLMAdapter):
    model_class_name = "PaliGemmaForConditionalGeneration"
    image_processor_class_name = "SiglipImageProcessorPil"
    shares_prompt_prefill = True
    drops_finished_rows = True

    def __init__(self, model: nn.Module, processor: Any = None, *, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        # The layout is the architecture's (prefix-LM with image + BOS + prompt + newline), not a checkpoint's choice.
        super().__init__(model, processor, chat_template=chat_template or PALIGEMMA_TEMPLATE, **kwargs)

    @classmethod
    def _load_processing(cls, path_or_id: str, common: dict) -> tuple[Any, Any, Any, str | None]:
        # A template file beside the checkpoint is not used on either path: the processor fixes the layout.
        processor, tokenizer, image_processor, _ = super()._load_processing(path_or_id, common)
        return processor, tokenizer, image_processor, None

    # ------------------------------------------------------------------ rows

    def render(self, item: VLMInput, with_answer: bool) -> str:
        """The processor's text: the prefix, or prefix + answer + EOS (tokenised apart, see `_encode_uncached`)."""
        return self.tokenizer.apply_chat_template(self._messages(item, with_answer), chat_template=self.chat_template,
                                                  tokenize=False, image_token=self.image_token)

    def _encode_prompt(self, prompt: str, image: Image.Image | None) -> tuple[list[int], dict[str, Any]]:
        # Always tokenizer + image processor: the processor adds BOS and newline itself and refuses text-only rows.
        vision: dict[str, Any] = {}
        text = prompt
        if image is not None:
            out = self.image_processor(images=[image], return_tensors="pt", **self._image_processor_kwargs())
            vision = {"pixel_values": out["pixel_values"]}
            text = prompt.replace(self.image_token, self._image_placeholder(vision), 1)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"], vision

    def _encode_uncached(self, item: VLMInput, for_generation: bool) -> EncodedRow:
        prompt = self.render(item, with_answer=False)
        ids, vision = self._encode_prompt(prompt, item.image)
        if for_generation or item.answer is None:
            return EncodedRow(ids, None, vision)
        # The suffix is tokenised on its own, as the processor's text pair is.
        answer = self.tokenizer(item.answer + (self.tokenizer.eos_token or ""), add_special_tokens=False)
        return EncodedRow(ids + answer["input_ids"], len(ids), vision)

    def _image_placeholder(self, vision: dict[str, Any]) -> str:
        return self.image_token * self._patches(vision)

    def _patches(self, vision: dict[str, Any]) -> int:
        pixels = torch.as_tensor(vision["pixel_values"])
        patch = int(self.model.config.vision_config.patch_size)
        return int(pixels.shape[0]) * (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)

    def _vision_positions(self, vision: dict[str, Any]) -> int:
        return self._patches(vision)

    # ------------------------------------------------------------------ prefix-LM attention

    def _extra_inputs(self, input_ids: torch.Tensor, rows: list[EncodedRow]) -> dict[str, torch.Tensor]:
        """`token_type_ids`: 1 from each row's answer on (the causal suffix), 0 on the prefix and padding."""
        types = torch.zeros_like(input_ids)
        width = input_ids.shape[1]
        for b, row in enumerate(rows):
            if row.answer_start is not None:
                types[b, width - len(row.input_ids) + row.answer_start:] = 1
        return {"token_type_ids": types}

    def _inputs_from_ids(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        # Ids alone are a generation prompt here (the resumed prompts of an MLP store): all prefix.
        return {"token_type_ids": torch.zeros_like(input_ids)}

    def _text_part(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # The suffix cannot be told from the ids: keep the batch's own token types.
        out = super()._text_part(inputs)
        if "token_type_ids" in inputs:
            out["token_type_ids"] = inputs["token_type_ids"]
        return out

    def _prefilled(self, batch: VLMBatch, repeat: torch.Tensor) -> dict[str, Any]:
        """Rows `repeat` of `batch`, whole: every prefix position attends to the last prompt token, so a cache of
        all positions but the last would not be the model's (the decoding loop shares whole-prompt prefills)."""
        inputs = batch.model_inputs()
        out: dict[str, Any] = {k: v[repeat] for k, v in inputs.items() if k != "pixel_values"}
        if "pixel_values" in inputs:
            has_image = torch.tensor(batch.has_image)
            image_index = has_image.long().cumsum(0) - 1
            picks = [int(image_index[r]) for r in repeat.tolist() if batch.has_image[r]]
            out["pixel_values"] = inputs["pixel_values"][torch.tensor(picks, device=inputs["pixel_values"].device)]
        return out

    # ------------------------------------------------------------------ Gemma 2 decoder

    def _lens_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Gemma 2's logit soft-cap, as PaliGemmaForConditionalGeneration applies it."""
        cap = getattr(self.text_config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits
