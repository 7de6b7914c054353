"""LLaVA-OneVision (`llava_onevision`): LLaVA-NeXT tiling with a SigLIP tower, a Qwen2 decoder and a feature cap.

An image becomes a base crop plus the tiles of its best `image_grid_pinpoints` resolution, unpadded to the
image's aspect ratio with one `image_newline` per feature row, as in LLaVA-NeXT; then "anyres_max_N"
(`vision_aspect_ratio`) shrinks a tile grid of more than about N crops' worth of features (bilinear, to
`int(h // ratio) x int(w // ratio)`). SigLIP has no CLS position, so the "full" feature strategy keeps every
patch. Rows carry `[1, n_tiles, 3, H, W]` pixel values and `image_sizes`, batched as LLaVA-NeXT's.

`LlavaOnevisionProcessor` cannot even be built without torchvision (its video processor), so the adapter runs
the manual path: `LlavaOnevisionImageProcessorPil` + the tokenizer, the placeholder counted as the processor
counts it. The hub chat template opens an answer turn with `<|im_start|>assistant \\n` but the generation prompt
with `<|im_start|>assistant\\n`; the teacher-forced answer is what follows either header.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from mmunlearn.models.adapters.base import register_adapter
from mmunlearn.models.adapters.llava import has_cls_token
from mmunlearn.models.adapters.llava_next import LlavaNextAdapter, _unpadded_features


def _max_crops(vision_aspect_ratio: str) -> int:
    """N of "anyres_max_N": the tile grid is shrunk once it holds more than about N crops' features."""
    return int(str(vision_aspect_ratio).removeprefix("anyres_max_"))


def _capped_features(features: int, rows: int, side: int, max_crops: int) -> tuple[int, int]:
    """Unpadded grid features and newlines after the anyres_max cap (as `LlavaOnevisionProcessor` counts)."""
    width = features // rows
    ratio = math.sqrt(rows * width / (max_crops * side**2))
    if ratio > 1.1:
        return int(rows // ratio) * int(width // ratio), int(rows // ratio)
    return features, rows


@register_adapter("llava_onevision")
class LlavaOnevisionAdapter(LlavaNextAdapter):
    model_class_name = "LlavaOnevisionForConditionalGeneration"
    image_processor_class_name = "LlavaOnevisionImageProcessorPil"

    def _image_placeholder(self, vision: dict[str, Any]) -> str:
        from transformers.image_processing_utils import select_best_resolution

        config = self.model.config
        orig_h, orig_w = (int(v) for v in torch.as_tensor(vision["image_sizes"])[0].tolist())
        height, width = (int(v) for v in vision["pixel_values"].shape[-2:])
        best_h, best_w = select_best_resolution([orig_h, orig_w], self._pinpoints())
        side = int(config.vision_config.image_size) // int(config.vision_config.patch_size)
        features, rows = _unpadded_features(orig_h, orig_w, side, side, best_h // height, best_w // width)
        features, rows = _capped_features(features, rows, side,
                                          _max_crops(getattr(config, "vision_aspect_ratio", "anyres_max_9")))
        n = features + rows + side * side + (1 if has_cls_token(config.vision_config) else 0)
        if getattr(config, "vision_feature_select_strategy", "full") == "default":
            n -= 1
        return self.image_token * n

    def _answer_tail(self, prompt: str, full: str) -> str:
        """The answer turn's header may differ from the generation prompt's in whitespace only (`assistant \\n`
        vs `assistant\\n`): the answer is what follows the header, after the generation prompt."""
        if not full.startswith(prompt):
            common = len(os.path.commonprefix([prompt, full]))
            if common and not prompt[common:].strip():
                full = prompt + full[common:].lstrip()
        return super()._answer_tail(prompt, full)
