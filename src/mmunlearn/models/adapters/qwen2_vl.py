"""Qwen2-VL and Qwen2.5-VL (`qwen2_vl`, `qwen2_5_vl`): native-resolution ViT with a patch merger, M-RoPE.

Each image is resized to a multiple of `patch_size * merge_size` and flattened into patches; it fills
`t*h*w / merge_size**2` `<|image_pad|>` tokens. Rows carry `pixel_values` `[n_patches, dim]` and
`image_grid_thw` `[1, 3]`, concatenated over image rows in row order. The model needs `mm_token_type_ids`
(1 on image tokens) to build its 3-D rotary positions, so the adapter derives it from the ids.

`Qwen2VLProcessor` holds a video processor that needs torchvision; without it the adapter builds rows
from `Qwen2VLImageProcessorPil` + the tokenizer (the manual path), which gives the same ids and tensors.
The projector (`merger`) lives inside the vision tower (`model.visual`).
"""

from __future__ import annotations

from typing import Any

import torch

from mmunlearn.models.adapters.base import VLMAdapter, register_adapter


def _merge_size(adapter: VLMAdapter) -> int:
    return int(adapter.model.config.vision_config.spatial_merge_size)


@register_adapter("qwen2_vl")
class Qwen2VLAdapter(VLMAdapter):
    model_class_name = "Qwen2VLForConditionalGeneration"
    image_processor_class_name = "Qwen2VLImageProcessorPil"
    language_model_path = "model.language_model"
    vision_tower_path = "model.visual"
    projector_path = "model.visual.merger"
    default_image_token = "<|image_pad|>"
    resume_keeps_vision = True  # the image grid sets the text's rotary positions

    def _image_placeholder(self, vision: dict[str, Any]) -> str:
        grid = torch.as_tensor(vision["image_grid_thw"])[0]
        return self.image_token * int(grid.prod().item() // _merge_size(self) ** 2)

    def _extra_inputs(self, input_ids: torch.Tensor, rows: list[Any]) -> dict[str, torch.Tensor]:
        return {"mm_token_type_ids": (input_ids == self.image_token_id).long()}

    def _vision_positions(self, vision: dict[str, Any]) -> int:
        return int(torch.as_tensor(vision["image_grid_thw"]).prod(-1).sum().item())


@register_adapter("qwen2_5_vl")
class Qwen25VLAdapter(Qwen2VLAdapter):
    model_class_name = "Qwen2_5_VLForConditionalGeneration"
