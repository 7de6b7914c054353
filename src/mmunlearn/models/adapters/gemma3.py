"""Gemma 3 (`gemma3`): SigLIP tower -> pooled soft tokens -> Gemma 3 decoder (sliding + global attention).

The chat template marks an image with `<start_of_image>`; the processor expands it to
`\\n\\n<start_of_image>` + `mm_tokens_per_image` `<image_soft_token>` + `<end_of_image>\\n\\n` (256 soft tokens
for every image size: the tower sees a fixed-size resize, pooled to 16 x 16). Pan-and-scan crops stay off, as
`Gemma3Processor` calls its image processor by default. The image's soft tokens attend to each other both ways: the
model builds that mask from `token_type_ids` (1 on soft tokens), which the adapter derives from the ids, so it
also reaches forward passes resumed above the vision tower.

Decoder layers norm the attention and MLP outputs before adding them to the residual ("sandwich" norms): the
base adapter finds them by name, so a forward resumed above an edited down-projection adds
`post_feedforward_layernorm(down_proj(...))` to the residual that enters `pre_feedforward_layernorm`.
"""

from __future__ import annotations

from typing import Any

import torch

from mmunlearn.models.adapters.base import EncodedRow, VLMAdapter, register_adapter


@register_adapter("gemma3")
class Gemma3Adapter(VLMAdapter):
    model_class_name = "Gemma3ForConditionalGeneration"
    image_processor_class_name = "Gemma3ImageProcessorPil"
    default_image_token = "<start_of_image>"
    shares_prompt_prefill = True
    drops_finished_rows = True

    def _image_token_string(self) -> str:
        """The chat template's image marker (`<start_of_image>`), not the soft token it expands to."""
        boi = getattr(self.tokenizer, "boi_token", None)
        if boi:
            return str(boi)
        boi_id = getattr(self.model.config, "boi_token_id", None)
        if boi_id is not None:
            return str(self.tokenizer.convert_ids_to_tokens(int(boi_id)))
        return self.default_image_token

    def _image_sequence(self) -> str:
        config = self.model.config
        soft = self.tokenizer.convert_ids_to_tokens(self.image_token_id)
        eoi = getattr(self.tokenizer, "eoi_token", None) or \
            self.tokenizer.convert_ids_to_tokens(int(config.eoi_token_id))
        return f"\n\n{self.image_token}{soft * int(config.mm_tokens_per_image)}{eoi}\n\n"

    def _image_processor_kwargs(self) -> dict[str, Any]:
        # Gemma3Processor's call defaults: whatever the image processor's config says, no pan-and-scan crops.
        return {"do_pan_and_scan": False}

    def _image_placeholder(self, vision: dict[str, Any]) -> str:
        config = self.model.config
        soft = self.tokenizer.convert_ids_to_tokens(self.image_token_id)
        eoi = getattr(self.tokenizer, "eoi_token", None) or \
            self.tokenizer.convert_ids_to_tokens(int(config.eoi_token_id))
        return f"\n\n{self.image_token}{soft * int(config.mm_tokens_per_image)}{eoi}\n\n"

    def _collate_vision(self, rows: list[EncodedRow], pads: list[int]) -> dict[str, torch.Tensor]:
        # One tower input per image, in row order (`num_crops`, always 0, is not a model input).
        image_rows = [r for r in rows if r.has_image]
        if not image_rows:
            return {}
        return {"pixel_values": torch.cat([torch.as_tensor(r.vision["pixel_values"]) for r in image_rows], dim=0)}

    def _inputs_from_ids(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        soft = input_ids == self.image_token_id
        return {"token_type_ids": soft.long()} if bool(soft.any()) else {}

    def _vision_positions(self, vision: dict[str, Any]) -> int:
        pixels = torch.as_tensor(vision["pixel_values"])
        patch = int(self.model.config.vision_config.patch_size)
        return int(pixels.shape[0]) * (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
