"""Idefics3 and SmolVLM (`idefics3`, `smolvlm`): SigLIP tower, pixel-shuffle connector, Llama/SmolLM decoder.

An image is resized, split into `rows x cols` square crops plus one global view, and every crop fills
`image_seq_len` `<image>` tokens framed by `<fake_token_around_image>` and `<row_i_col_j>` / `<global-img>`
markers. Pixel values are per batch row, `[batch, n_crops, 3, H, W]` with a `pixel_attention_mask`; the model
drops all-zero crops, so a text-only row in a mixed batch is a row of zero crops.

`SmolVLMProcessor` needs torchvision (video processor); without it the adapter expands the placeholder itself
from `SmolVLMImageProcessorPil` rows/cols, exactly as the processor does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mmunlearn.models.adapters.base import EncodedRow, VLMAdapter, register_adapter


@register_adapter("idefics3")
class Idefics3Adapter(VLMAdapter):
    model_class_name = "Idefics3ForConditionalGeneration"
    image_processor_class_name = "Idefics3ImageProcessorPil"
    language_model_path = "model.text_model"
    vision_tower_path = "model.vision_model"
    projector_path = "model.connector"
    drops_finished_rows = True

    fake_image_token = "<fake_token_around_image>"
    global_image_token = "<global-img>"

    def _image_seq_len(self) -> int:
        processor_len = getattr(self.processor, "image_seq_len", None)
        if processor_len:
            return int(processor_len)
        config = self.model.config
        vision = config.vision_config
        return int((int(vision.image_size) // int(vision.patch_size)) ** 2 / int(config.scale_factor) ** 2)

    def _image_processor_kwargs(self) -> dict[str, Any]:
        return {"return_row_col_info": True}

    def _image_placeholder(self, vision: dict[str, Any]) -> str:
        rows, cols = int(vision["rows"][0][0]), int(vision["cols"][0][0])
        crop = self.image_token * self._image_seq_len()
        global_view = f"{self.fake_image_token}{self.global_image_token}{crop}{self.fake_image_token}"
        if rows == 0 and cols == 0:
            return global_view
        text = ""
        for r in range(rows):
            for c in range(cols):
                text += f"{self.fake_image_token}<row_{r + 1}_col_{c + 1}>{crop}"
            text += "\n"
        return f"{text}\n{global_view}"

    def _collate_vision(self, rows: list[EncodedRow], pads: list[int]) -> dict[str, torch.Tensor]:
        image_rows = [r for r in rows if r.has_image]
        if not image_rows:
            return {}
        pixels = [torch.as_tensor(r.vision["pixel_values"]) for r in image_rows]
        n_crops = max(p.shape[1] for p in pixels)
        height = max(p.shape[-2] for p in pixels)
        width = max(p.shape[-1] for p in pixels)
        channels = pixels[0].shape[2]
        out_pixels, out_masks = [], []
        for row in rows:
            if not row.has_image:
                out_pixels.append(torch.zeros((1, n_crops, channels, height, width), dtype=pixels[0].dtype))
                out_masks.append(torch.zeros((1, n_crops, height, width), dtype=torch.long))
                continue
            p = torch.as_tensor(row.vision["pixel_values"])
            mask = row.vision.get("pixel_attention_mask")
            mask = torch.ones(p.shape[:2] + p.shape[-2:], dtype=torch.long) if mask is None else \
                torch.as_tensor(mask).long()
            grow = (0, width - p.shape[-1], 0, height - p.shape[-2])
            out_pixels.append(F.pad(p, grow + (0, 0, 0, n_crops - p.shape[1])))
            out_masks.append(F.pad(mask, grow + (0, n_crops - p.shape[1])))
        return {"pixel_values": torch.cat(out_pixels, dim=0), "pixel_attention_mask": torch.cat(out_masks, dim=0)}

    def _vision_positions(self, vision: dict[str, Any]) -> int:
        pixels = torch.as_tensor(vision["pixel_values"])
        crops = pixels.reshape(-1, *pixels.shape[-3:])
        real = int((crops != 0).flatten(1).any(dim=1).sum().item())
        config = self.model.config.vision_config
        return real * (int(config.image_size) // int(config.patch_size)) ** 2


@register_adapter("smolvlm")
class SmolVLMAdapter(Idefics3Adapter):
    model_class_name = "SmolVLMForConditionalGeneration"
    image_processor_class_name = "SmolVLMImageProcessorPil"
