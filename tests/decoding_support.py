"""Helpers for tests of decoding that drops finished rows: early stop tokens, batch sizes, the reference texts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import LogitsProcessorList

from mmunlearn.models.adapters import VLMAdapter, VLMInput

STEPS = 6


def reference(adapter: VLMAdapter, items: list[VLMInput], stops: list[int], sampler=None) -> list[str]:
    """`model.generate` on one batch of `items`, cut at the first of `stops`."""
    batch = adapter.format(items, for_generation=True)
    extra = {} if sampler is None else {"logits_processor": LogitsProcessorList([sampler])}
    with torch.no_grad():
        out = adapter.model.generate(**batch.model_inputs(), max_new_tokens=STEPS, do_sample=False,
                                     eos_token_id=stops, pad_token_id=adapter.pad_token_id, **extra)
    width = batch.inputs["input_ids"].shape[1]
    texts = []
    for row in out[:, width:].tolist():
        cut = next((k for k, t in enumerate(row) if t in stops), len(row))
        texts.append(adapter.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return texts


def early_stop(adapter: VLMAdapter, items: list[VLMInput], sampler=None) -> list[int]:
    """The adapter's stop tokens plus one the rows emit at different steps, so that they stop at different
    steps (a random model rarely ends its turn by itself)."""
    batch = adapter.format(items, for_generation=True)
    extra = {} if sampler is None else {"logits_processor": LogitsProcessorList([sampler])}
    with torch.no_grad():
        out = adapter.model.generate(**batch.model_inputs(), max_new_tokens=STEPS, do_sample=False,
                                     eos_token_id=adapter.stop_token_ids, pad_token_id=adapter.pad_token_id,
                                     **extra)
    return stop_between(adapter, out[:, batch.inputs["input_ids"].shape[1]:].tolist())


def stop_between(adapter: VLMAdapter, rows: list[list[int]]) -> list[int]:
    """The adapter's stop tokens plus one that these generated rows emit at different steps (or not at all)."""
    for token in sorted({t for row in rows for t in row[:STEPS - 1]}):
        firsts = {row.index(token) if token in row[:STEPS - 1] else None for row in rows}
        if len(firsts) >= 2:
            return [*adapter.stop_token_ids, token]
    raise AssertionError("no token makes these rows stop at different steps")


@contextlib.contextmanager
def batch_sizes(adapter: VLMAdapter) -> Iterator[list[int]]:
    """The batch size of every language-model forward pass inside."""
    sizes: list[int] = []

    def record(module, args, kwargs):
        x = kwargs.get("inputs_embeds")
        x = kwargs.get("input_ids") if x is None else x
        sizes.append(int(x.shape[0]))

    lm = adapter.model.get_submodule(adapter.language_model_path)
    handle = lm.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield sizes
    finally:
        handle.remove()


@contextlib.contextmanager
def stopping_at(adapter: VLMAdapter, stops: list[int]) -> Iterator[None]:
    saved = adapter.stop_token_ids
    adapter.stop_token_ids = stops
    try:
        yield
    finally:
        adapter.stop_token_ids = saved
