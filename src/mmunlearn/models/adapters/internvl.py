"""InternVL 2.5 / 3 as ported to transformers (`internvl`): InternViT -> pixel-shuffle MLP projector -> Qwen2/Llama.

An image is cut into square tiles (GotOcr2 `crop_to_patches`: the grid of at most `max_patches` tiles closest to
its aspect ratio, plus a thumbnail when there is more than one tile); every tile fills `image_seq_length`
`<IMG_CONTEXT>` tokens, `((size/patch) * downsample_ratio)**2` (256 for 448 px tiles, patch 14, ratio 0.5), and
the whole image is wrapped in `<img>` ... `</img>`. Rows carry `pixel_values` `[n_tiles, 3, H, W]`; a batch
concatenates the tiles of its image rows in row order, which is the order the model scatters the features
into the `<IMG_CONTEXT>` positions (row-major), so text-only rows mix freely.

`InternVLProcessor` holds a video processor that needs torchvision; without it the adapter builds rows from
`GotOcr2ImageProcessorPil` (with `crop_to_patches`, as the processor asks) + the tokenizer, expanding the
placeholder from the tiles the image processor returns (the manual path), which gives the processor's ids and
tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from mmunlearn.models.adapters.base import VLMAdapter, register_adapter


def _pair(value: Any) -> tuple[int, int]:
    """Vision configs store sizes as an int or a (height, width) pair."""
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


@register_adapter("internvl")
class InternVLAdapter(VLMAdapter):
    model_class_name = "InternVLForConditionalGeneration"
    image_processor_class_name = "GotOcr2ImageProcessorPil"
    language_model_path = "model.language_model"
    vision_tower_path = "model.vision_tower"
    projector_path = "model.multi_modal_projector"
    default_image_token = "<IMG_CONTEXT>"
    shares_prompt_prefill = True
    drops_finished_rows = True

    def _image_processor_kwargs(self) -> dict[str, Any]:
        # The hub's preprocessor config says crop_to_patches=False; InternVLProcessor turns it on for every call.
        return {"crop_to_patches": True}

    def _encode_prompt(self, prompt: str, image: Image.Image | None) -> tuple[list[int], dict[str, Any]]:
        ids, vision = super()._encode_prompt(prompt, image)
        vision.pop("num_patches", None)  # tile count, read by the placeholder; the model takes no such input
        return ids, vision

    def _tokens_per_tile(self, height: int, width: int) -> int:
        """Features one tile gives after the pixel shuffle (the CLS position is dropped before it)."""
        config = self.model.config
        patch_h, patch_w = _pair(config.vision_config.patch_size)
        ratio = float(config.downsample_ratio)
        return int(height // patch_h * ratio) * int(width // patch_w * ratio)

    def _image_placeholder(self, vision: dict[str, Any]) -> str:
        pixels = torch.as_tensor(vision["pixel_values"])
        tiles = int(torch.as_tensor(vision["num_patches"]).sum().item())
        per_tile = self._tokens_per_tile(int(pixels.shape[-2]), int(pixels.shape[-1]))
        start = getattr(self.tokenizer, "start_image_token", None) or "<img>"
        end = getattr(self.tokenizer, "end_image_token", None) or "</img>"
        return f"{start}{self.image_token * per_tile * tiles}{end}"

    def _vision_positions(self, vision: dict[str, Any]) -> int:
        pixels = torch.as_tensor(vision["pixel_values"])
        patch_h, patch_w = _pair(self.model.config.vision_config.patch_size)
        per_tile = (pixels.shape[-2] // patch_h) * (pixels.shape[-1] // patch_w) + 1  # + CLS
        return int(pixels.shape[0]) * int(per_tile)
