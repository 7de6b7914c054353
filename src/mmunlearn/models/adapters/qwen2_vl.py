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

from collections.abc import Sequence
from typing import Any

import torch

from mmunlearn.errors import MMUnlearnError
from mmunlearn.models.adapters.base import VLMAdapter, VLMBatch, register_adapter


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

    def _patch_layout(self) -> tuple[int, int, int]:
        vision = self.model.config.vision_config
        return int(vision.patch_size), _merge_size(self), int(vision.temporal_patch_size)

    def image_views(self, batch: VLMBatch) -> list[torch.Tensor]:
        """Each image's flattened patches (the image processor's `patchify`) put back into its `[3, H, W]`
        image; of a still image's `temporal_patch_size` identical frames, the first."""
        patch, merge, frames = self._patch_layout()
        pixels, views, start = batch.inputs["pixel_values"], [], 0
        for t, gh, gw in batch.inputs["image_grid_thw"].tolist():
            if t != 1:
                raise MMUnlearnError(f"{type(self).__name__}: an image of {t} temporal patches has no single view")
            rows = pixels[start:start + gh * gw].reshape(gh // merge, gw // merge, merge, merge, -1, frames, patch,
                                                         patch)[:, :, :, :, :, 0]
            views.append(rows.permute(4, 0, 2, 5, 1, 3, 6).reshape(-1, gh * patch, gw * patch))
            start += gh * gw
        return views

    def with_image_views(self, batch: VLMBatch, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The patches of each view as the image processor lays them out, its frame repeated in time."""
        patch, merge, frames = self._patch_layout()
        rows = []
        for view in views:
            channels, height, width = view.shape
            gh, gw = height // patch, width // patch
            x = view.reshape(channels, gh // merge, merge, patch, gw // merge, merge, patch)
            x = x.permute(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, C, p, p), as `patchify`
            x = x.unsqueeze(5).expand(*x.shape[:5], frames, *x.shape[5:])
            rows.append(x.reshape(gh * gw, channels * frames * patch * patch))
        return {**batch.model_inputs(), "pixel_values": torch.cat(rows).to(self.dtype)}


@register_adapter("qwen2_5_vl")
class Qwen25VLAdapter(Qwen2VLAdapter):
    model_class_name = "Qwen2_5_VLForConditionalGeneration"
