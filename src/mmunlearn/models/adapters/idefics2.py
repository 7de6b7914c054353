"""Idefics2 (`idefics2`): SigLIP tower (native aspect ratio) -> perceiver-resampler connector -> Mistral decoder.

An image is resized to fit `longest_edge` (at least `shortest_edge` a side) and, with `do_image_splitting` (on in
HuggingFaceM4/idefics2-8b), also cut into 4 quarter crops, each resized alike, before the whole image. Every view
fills `perceiver_config.resampler_n_latents` (64) `<image>` tokens; the views are framed and separated by
`<fake_token_around_image>` (one between two views), and a word glued to the closing one gets a space, as
`Idefics2Processor` writes it. Pixel values are per batch row, `[batch, n_views, 3, H, W]` padded to the batch's
largest view with a `pixel_attention_mask`; the model drops all-zero views, so a text-only row in a mixed batch
is a row of zero views (Idefics3's layout, whose collation this adapter reuses).

`Idefics2Processor` holds no video processor, so it loads without torchvision; the manual path (tokenizer +
`Idefics2ImageProcessorPil`) gives the same rows.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from mmunlearn.models.adapters.base import FlopCount, VLMInput, register_adapter
from mmunlearn.models.adapters.idefics3 import Idefics3Adapter


@register_adapter("idefics2")
class Idefics2Adapter(Idefics3Adapter):
    model_class_name = "Idefics2ForConditionalGeneration"
    image_processor_class_name = "Idefics2ImageProcessorPil"
    # Decoding from a prompt's KV cache needs no pixel values (the last prompt token is text).
    shares_prompt_prefill = True

    def _image_seq_len(self) -> int:
        processor_len = getattr(self.processor, "image_seq_len", None)
        if processor_len:
            return int(processor_len)
        return int(self.model.config.perceiver_config.resampler_n_latents)

    def _image_processor_kwargs(self) -> dict[str, Any]:
        return {}

    def _image_placeholder(self, vision: dict[str, Any]) -> str:
        """One `<fake>` + `<image>` x seq_len run per view (whole image alone, or 4 crops + whole image), with a
        single `<fake>` between two views, as the processor's collapse of doubled fake tokens leaves them."""
        views = int(torch.as_tensor(vision["pixel_values"]).shape[1])
        run = self.image_token * self._image_seq_len()
        return self.fake_image_token + f"{run}{self.fake_image_token}" * views

    def _encode_prompt(self, prompt: str, image: Image.Image | None) -> tuple[list[int], dict[str, Any]]:
        if self.processor is not None or image is None:
            return super()._encode_prompt(prompt, image)
        vision = dict(self.image_processor(images=[image], return_tensors="pt"))
        text = prompt.replace(self.image_token, self._image_placeholder(vision), 1)
        # The processor separates a word glued to a closing fake token from it (it tokenises differently).
        fake = re.escape(self.fake_image_token)
        text = re.sub(rf"{fake}(?=[^\s<])", f"{self.fake_image_token} ", text)
        return self.tokenizer(text, add_special_tokens=self._adds_special_tokens(prompt))["input_ids"], vision

    def _vision_positions(self, vision: dict[str, Any]) -> int:
        """Patches of the real views inside their pixel mask: the variable-size views are padded to the largest,
        and the tower masks (and the connector drops) the padding patches, as the model's patch mask does."""
        pixels = torch.as_tensor(vision["pixel_values"])
        views = pixels.reshape(-1, *pixels.shape[-3:])
        real = (views != 0).flatten(1).any(dim=1)
        patch = int(self.model.config.vision_config.patch_size)
        mask = vision.get("pixel_attention_mask")
        if mask is None:
            return int(real.sum()) * (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
        mask = torch.as_tensor(mask)
        mask = mask.reshape(-1, *mask.shape[-2:])[real]
        cells = mask.unfold(1, patch, patch).unfold(2, patch, patch).sum(dim=(-1, -2))
        return int((cells == patch * patch).sum().item())

    def flops(self, items: Sequence[VLMInput], backward: bool) -> list[FlopCount]:
        """The base count, plus the connector's work over the vision positions: its modality projection (an MLP
        of the decoder's width) maps every patch, and the resampler's key/value projections read every patch
        besides the latents; the base formula runs the whole connector over the image tokens (latents) only."""
        connector = self.model.get_submodule(self.projector_path)
        p_patch = sum(p.numel() for p in connector.modality_projection.parameters())
        p_kv = sum(p.numel() for layer in connector.perceiver_resampler.layers
                   for proj in (layer.self_attn.k_proj, layer.self_attn.v_proj) for p in proj.parameters())
        tower = self._params(self.vision_tower_path, exclude=self.projector_path)
        trains = any(p.requires_grad for p in tower) or any(p.requires_grad for p in connector.parameters())
        factor = 3.0 if backward and trains else 1.0
        out = []
        for count in super().flops(items, backward):
            extra = 2.0 * (p_patch * (count.vision_positions - count.image_tokens) + p_kv * count.vision_positions)
            out.append(dataclasses.replace(count, vision=count.vision + factor * extra))
        return out
