"""LLaVA-NeXT / LLaVA-1.6 (`llava_next`): any-resolution tiling on top of the LLaVA layout.

Each image becomes a base crop plus the tiles of its best grid resolution; features are unpadded to the
image's aspect ratio with one `image_newline` per row. Rows carry `[1, n_tiles, 3, H, W]` pixel values and
`image_sizes`; a batch pads the tile dimension (the model drops the padding using `image_sizes`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mmunlearn.models.adapters.base import EncodedRow, register_adapter
from mmunlearn.models.adapters.llava import LlavaAdapter, has_cls_token


def _unpadded_features(height: int, width: int, patches_h: int, patches_w: int, scale_h: int,
                       scale_w: int) -> tuple[int, int]:
    """Features left after unpadding, and one newline per feature row (as LlavaNextProcessor counts)."""
    current_h, current_w = patches_h * scale_h, patches_w * scale_w
    if width / height > current_w / current_h:
        new_h = int(round(height * (current_w / width), 7))
        current_h -= ((current_h - new_h) // 2) * 2
    else:
        new_w = int(round(width * (current_h / height), 7))
        current_w -= ((current_w - new_w) // 2) * 2
    return current_h * current_w, current_h


@register_adapter("llava_next")
class LlavaNextAdapter(LlavaAdapter):
    model_class_name = "LlavaNextForConditionalGeneration"
    image_processor_class_name = "LlavaNextImageProcessorPil"

    def _pinpoints(self) -> list[list[int]]:
        return [list(p) for p in self.model.config.image_grid_pinpoints]

    def _image_placeholder(self, vision: dict[str, Any]) -> str:
        from transformers.image_processing_utils import select_best_resolution

        config = self.model.config
        orig_h, orig_w = (int(v) for v in torch.as_tensor(vision["image_sizes"])[0].tolist())
        height, width = (int(v) for v in vision["pixel_values"].shape[-2:])
        best_h, best_w = select_best_resolution([orig_h, orig_w], self._pinpoints())
        patch = int(config.vision_config.patch_size)
        unpadded, newlines = _unpadded_features(orig_h, orig_w, height // patch, width // patch,
                                                best_h // height, best_w // width)
        base = (height // patch) * (width // patch) + (1 if has_cls_token(config.vision_config) else 0)
        n = unpadded + newlines + base
        if getattr(config, "vision_feature_select_strategy", "default") == "default":
            n -= 1
        return self.image_token * n

    def _collate_vision(self, rows: list[EncodedRow], pads: list[int]) -> dict[str, torch.Tensor]:
        image_rows = [r for r in rows if r.has_image]
        if not image_rows:
            return {}
        pixels = [torch.as_tensor(r.vision["pixel_values"]) for r in image_rows]
        most = max(p.shape[1] for p in pixels)
        pixels = [F.pad(p, (0, 0, 0, 0, 0, 0, 0, most - p.shape[1])) for p in pixels]
        sizes = [torch.as_tensor(r.vision["image_sizes"]) for r in image_rows]
        return {"pixel_values": torch.cat(pixels, dim=0), "image_sizes": torch.cat(sizes, dim=0)}

    def _vision_positions(self, vision: dict[str, Any]) -> int:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        config = self.model.config
        tiles = image_size_to_num_patches(torch.as_tensor(vision["image_sizes"])[0].tolist(), self._pinpoints(),
                                          int(config.vision_config.image_size))
        pixels = vision["pixel_values"]
        patch = int(config.vision_config.patch_size)
        per_crop = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
        return int(tiles) * (per_crop + (1 if has_cls_token(config.vision_config) else 0))
