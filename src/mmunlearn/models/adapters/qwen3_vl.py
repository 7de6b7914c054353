"""Qwen3-VL (`qwen3_vl`): Qwen2-VL's rows and M-RoPE inputs, plus DeepStack.

Rows are built as for Qwen2-VL: `Qwen2VLImageProcessorPil` (patch 16, merge 2 in the real model), an image fills
`t*h*w / merge_size**2` `<|image_pad|>` tokens, and the model needs `mm_token_type_ids` and `image_grid_thw` for
its interleaved 3-D rotary positions. `Qwen3VLProcessor` holds a video processor that needs torchvision, so the
adapter runs the manual path (tokenizer + PIL image processor), which gives the processor's ids and tensors.

DeepStack: the vision tower also returns features of some intermediate blocks, and the decoder ADDS the k-th of
them to its residual stream at the image positions right after decoder layer k (k = 0, 1, 2 in the real model).
The image therefore enters more than the embedding, which matters when a forward resumes at a layer:

* a stored layer input (`layer_inputs`, `from_layer`) already holds the addition after the layer below it, so
  the resumed forward must not add it again (the replayed output skips it);
* a stored MLP residual (`mlp_down_inputs`) is taken inside a layer, before that addition, so the resumed
  forward adds it as the model does;
* the additions after the resumed layers need the vision tower's features: a resumed forward keeps the vision
  inputs (as Qwen2-VL's does for its positions), and both resumes stay exact.

The DeepStack mergers (`model.visual.deepstack_merger_list`) map vision features to the decoder's width like the
main merger, once per image token: they count as the projector (FLOPs, `freeze_vision`), not as the tower.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from mmunlearn.errors import MMUnlearnError
from mmunlearn.models.adapters.base import MlpDownStore, VLMBatch, register_adapter
from mmunlearn.models.adapters.qwen2_vl import Qwen2VLAdapter

DEEPSTACK_MERGERS = "model.visual.deepstack_merger_list"


@register_adapter("qwen3_vl")
class Qwen3VLAdapter(Qwen2VLAdapter):
    model_class_name = "Qwen3VLForConditionalGeneration"
    # Resumes stay exact with DeepStack: `_replaying` skips the one addition a stored layer input already holds.
    resumes_at_layer = True
    resume_keeps_vision = True  # the image grid sets the text's positions; DeepStack adds above the resumed layer

    _replays_layer_output: bool = False  # set while `_states_above_mlp_down` replays

    def _params(self, path: str, exclude: str | None = None) -> list[nn.Parameter]:
        """The projector includes the DeepStack mergers, and the tower without its projector excludes them."""
        params = super()._params(path, exclude)
        deepstack = list(self.model.get_submodule(DEEPSTACK_MERGERS).parameters())
        if path == self.projector_path:
            return params + deepstack
        if exclude == self.projector_path:
            skip = {id(p) for p in deepstack}
            return [p for p in params if id(p) not in skip]
        return params

    def _states_above_mlp_down(self, batch: VLMBatch, store: MlpDownStore, rows: Sequence[int]) -> list[torch.Tensor]:
        """As the base, with the replayed tensor being a layer's output before its DeepStack addition."""
        self._replays_layer_output = True
        try:
            return super()._states_above_mlp_down(batch, store, rows)
        finally:
            self._replays_layer_output = False

    @contextlib.contextmanager
    def _replaying(self, layer: int, stored: torch.Tensor) -> Iterator[None]:
        """The base replay, with DeepStack additions that would land on the skipped layers left out.

        The additions after layers below `layer - 1` only feed skipped layers. The one after `layer - 1`, which
        returns `stored`: already in `stored` where that is decoder `layer`'s input; still due where `stored` is
        layer `layer - 1`'s output above its MLP (`_states_above_mlp_down`).
        """
        text = self.model.get_submodule(self.language_model_path)
        add = text._deepstack_process
        skipped = layer if not self._replays_layer_output else layer - 1
        calls = [0]  # the additions follow layers 0, 1, ... in order, once per forward

        def deepstack(hidden_states: torch.Tensor, *args: Any) -> torch.Tensor:
            k = calls[0]
            calls[0] += 1
            if k >= skipped:
                return add(hidden_states, *args)
            if k == layer - 1 and hidden_states is not stored:
                raise MMUnlearnError(f"model {self.name!r}: DeepStack addition {k} does not follow the replayed "
                                     "layer; cannot resume this forward exactly")
            return hidden_states

        with super()._replaying(layer, stored):
            text._deepstack_process = deepstack
            try:
                yield
            finally:
                del text._deepstack_process
