"""Mistral 3 / Mistral Small 3.1 (`mistral3`): Pixtral tower (native resolution, 2-D RoPE) -> patch merger -> Mistral.

An image keeps its aspect ratio: it is shrunk to fit `longest_edge` and each side rounded up to a multiple of
`patch_size * spatial_merge_size` (28 px); the tower sees `(h/14)(w/14)` patches and the projector merges each
2 x 2 block into one feature. The chat template's `[IMG]` becomes one row of `[IMG]` per merged feature row, each
row closed by `[IMG_BREAK]` and the last one by `[IMG_END]` instead (structural text tokens, not image tokens).

Rows carry `pixel_values` `[1, 3, h, w]` and `image_sizes` `[1, 2]` (the resized (h, w)). A batch pads the pixel
values of its image rows with zeros at the bottom and right to the largest height and width, as the processor
pads a batch, and concatenates them in row order with their sizes; the tower crops every image back to its own
size before the patches meet (one block-diagonal attention over all images), so text-only rows mix freely.

`PixtralProcessor` needs torchvision (its module imports the torchvision image processor), so without it the
adapter runs the manual path: `PixtralImageProcessorPil` asked for `patch_size * spatial_merge_size`, as the
processor asks, + the tokenizer. The hub chat template writes today's date into its default system prompt, so
prompts without a system turn change from one day to the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from mmunlearn.models.adapters.base import EncodedRow, VLMAdapter, VLMBatch, register_adapter


def _side(value: Any) -> int:
    """Pixtral configs store the patch size as an int (or a square pair)."""
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


@register_adapter("mistral3")
class Mistral3Adapter(VLMAdapter):
    model_class_name = "Mistral3ForConditionalGeneration"
    image_processor_class_name = "PixtralImageProcessorPil"
    default_image_token = "[IMG]"
    shares_prompt_prefill = True
    drops_finished_rows = True

    image_break_token = "[IMG_BREAK]"
    image_end_token = "[IMG_END]"

    def _patch(self) -> int:
        return _side(self.model.config.vision_config.patch_size)

    def _token_side(self) -> int:
        """Pixels per merged feature along each side (patch_size * spatial_merge_size: 28 for 14 px patches)."""
        return self._patch() * int(self.model.config.spatial_merge_size)

    def _image_processor_kwargs(self) -> dict[str, Any]:
        # PixtralProcessor resizes to multiples of the merged patch, whatever the image processor's config says.
        return {"patch_size": self._token_side()}

    def _image_placeholder(self, vision: dict[str, Any]) -> str:
        height, width = (int(v) for v in torch.as_tensor(vision["image_sizes"])[0].tolist())
        side = self._token_side()
        rows, cols = height // side, width // side
        row = self.image_token * cols
        return (row + self.image_break_token) * (rows - 1) + row + self.image_end_token

    def _collate_vision(self, rows: list[EncodedRow], pads: list[int]) -> dict[str, torch.Tensor]:
        image_rows = [r for r in rows if r.has_image]
        if not image_rows:
            return {}
        pixels = [torch.as_tensor(r.vision["pixel_values"]) for r in image_rows]
        height = max(p.shape[-2] for p in pixels)
        width = max(p.shape[-1] for p in pixels)
        padded = [F.pad(p, (0, width - p.shape[-1], 0, height - p.shape[-2])) for p in pixels]
        sizes = [torch.as_tensor(r.vision["image_sizes"]) for r in image_rows]
        return {"pixel_values": torch.cat(padded, dim=0), "image_sizes": torch.cat(sizes, dim=0)}

    def image_views(self, batch: VLMBatch) -> list[torch.Tensor]:
        """Each image without the batch's zero padding: its own `image_sizes` (h, w)."""
        views = super().image_views(batch)
        return [view[:, :h, :w] for view, (h, w) in zip(views, batch.inputs["image_sizes"].tolist())]

    def with_image_views(self, batch: VLMBatch, views: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The views padded with zeros to the batch's width, as `_collate_vision` pads them."""
        height, width = batch.inputs["pixel_values"].shape[-2:]
        padded = [F.pad(view, (0, width - view.shape[-1], 0, height - view.shape[-2])) for view in views]
        return super().with_image_views(batch, padded)

    def _vision_positions(self, vision: dict[str, Any]) -> int:
        patch = self._patch()
        sizes = torch.as_tensor(vision["image_sizes"]).reshape(-1, 2)
        return int(((sizes[:, 0] // patch) * (sizes[:, 1] // patch)).sum().item())
