"""Llama-3.2-Vision (`mllama`): tiled ViT whose features enter the decoder through cross-attention layers.

The text holds a single `<|image|>` token per image (no expansion); tokens from that position on attend to
the image's tiles through `cross_attention_mask` `[batch, seq, n_images, max_tiles]`, which the adapter
rebuilds from the padded ids and the tile counts. The sequence therefore carries no image tokens: token
accounting reports the image's cost as vision positions (tiles x (patches + 1)). Image and text-only rows
are never mixed in one forward pass (the adapter splits them).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mmunlearn.errors import MMUnlearnError
from mmunlearn.models.adapters.base import EncodedRow, VLMAdapter, register_adapter


@register_adapter("mllama")
class MllamaAdapter(VLMAdapter):
    model_class_name = "MllamaForConditionalGeneration"
    image_processor_class_name = "MllamaImageProcessorPil"
    language_model_path = "model.language_model"
    vision_tower_path = "model.vision_model"
    projector_path = "model.multi_modal_projector"
    default_image_token = "<|image|>"
    can_mix_modalities = False
    expands_image_tokens = False
    resumes_at_layer = False  # text-only rows skip the cross-attention layers (`_complete_hidden_states`)

    def _image_placeholder(self, vision: dict[str, Any]) -> str:
        return self.image_token

    def _collate_vision(self, rows: list[EncodedRow], pads: list[int]) -> dict[str, torch.Tensor]:
        from transformers.models.mllama.processing_mllama import get_cross_attention_token_mask

        if not any(r.has_image for r in rows):
            return {}
        pixels = [torch.as_tensor(r.vision["pixel_values"]) for r in rows]
        n_images = max(p.shape[1] for p in pixels)
        ratio_ids = [torch.as_tensor(r.vision["aspect_ratio_ids"]) for r in rows]
        ratio_masks = [torch.as_tensor(r.vision["aspect_ratio_mask"]).long() for r in rows]
        max_tiles = pixels[0].shape[2]
        width = max(len(r.input_ids) for r in rows)
        cross = torch.zeros((len(rows), width, n_images, max_tiles), dtype=torch.long)
        for b, row in enumerate(rows):
            tiles = ratio_masks[b][0].sum(-1).tolist()
            spans = get_cross_attention_token_mask(row.input_ids, self.image_token_id)
            for k, (start, end) in enumerate(spans[:n_images]):
                end = len(row.input_ids) if end == -1 else min(end, len(row.input_ids))
                cross[b, pads[b] + start:pads[b] + end, k, :int(tiles[k])] = 1
        return {
            "pixel_values": torch.cat([F.pad(p, (0, 0) * 4 + (0, n_images - p.shape[1])) for p in pixels]),
            "aspect_ratio_ids": torch.cat([F.pad(a, (0, n_images - a.shape[1])) for a in ratio_ids]),
            "aspect_ratio_mask": torch.cat([F.pad(m, (0, 0, 0, n_images - m.shape[1])) for m in ratio_masks]),
            "cross_attention_mask": cross,
        }

    def _complete_hidden_states(self, states: list[torch.Tensor]) -> list[torch.Tensor]:
        """Text-only forwards skip the cross-attention layers, which then leave the residual unchanged: repeat it.

        Only possible while the last layer runs (its output is the normed one transformers returns last);
        Llama-3.2-Vision's cross-attention layers never include the last layer.
        """
        n_layers = self.num_layers
        cross = {int(i) for i in (getattr(self.text_config, "cross_attention_layers", None) or [])}
        executed = [i for i in range(n_layers) if i not in cross]
        if len(states) == n_layers + 1 or len(states) != len(executed) + 1:
            return states
        if n_layers - 1 in cross:
            raise MMUnlearnError(f"model {self.name!r}: the last decoder layer is a cross-attention layer, so a "
                                 "text-only forward returns no un-normed state for it; probe image rows only")
        full, recorded = [states[0]], iter(states[1:])
        for i in range(n_layers):
            full.append(next(recorded) if i not in cross else full[-1])
        return full

    def _vision_positions(self, vision: dict[str, Any]) -> int:
        config = self.model.config.vision_config
        tiles = int(torch.as_tensor(vision["aspect_ratio_mask"]).sum().item())
        return tiles * ((int(config.image_size) // int(config.patch_size)) ** 2 + 1)
