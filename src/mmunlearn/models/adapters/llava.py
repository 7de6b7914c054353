"""LLaVA-1.5 (`llava`): CLIP/SigLIP tower -> MLP projector -> Llama/Vicuna/Mistral decoder.

Serves llava-hf/llava-1.5-7b-hf and -13b-hf and the tiny model of `mmunlearn.models.tiny_llava`. One image
becomes one crop of `(H/p)*(W/p)` patch features (+1 CLS kept under the "full" strategy); a mixed batch
carries pixel values only for the image rows, in row order, and the model scatters them row-major.
"""

from __future__ import annotations

from typing import Any

import torch

from mmunlearn.models.adapters.base import VLMAdapter, register_adapter


def has_cls_token(vision_config: Any) -> bool:
    """CLIP towers prepend a CLS position; SigLIP towers do not."""
    return "clip" in str(getattr(vision_config, "model_type", "")).lower()


@register_adapter("llava")
class LlavaAdapter(VLMAdapter):
    model_class_name = "LlavaForConditionalGeneration"
    image_processor_class_name = "CLIPImageProcessorPil"
    shares_prompt_prefill = True
    drops_finished_rows = True

    def _features_per_crop(self, height: int, width: int) -> int:
        config = self.model.config
        patch = int(config.vision_config.patch_size)
        n = (height // patch) * (width // patch) + (1 if has_cls_token(config.vision_config) else 0)
        if getattr(config, "vision_feature_select_strategy", "default") == "default":
            n -= 1
        return n

    def _image_placeholder(self, vision: dict[str, Any]) -> str:
        height, width = vision["pixel_values"].shape[-2:]
        return self.image_token * self._features_per_crop(int(height), int(width))

    def _vision_positions(self, vision: dict[str, Any]) -> int:
        pixels = torch.as_tensor(vision["pixel_values"])
        patch = int(self.model.config.vision_config.patch_size)
        per_crop = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
        per_crop += 1 if has_cls_token(self.model.config.vision_config) else 0
        return int(pixels.shape[0]) * per_crop
