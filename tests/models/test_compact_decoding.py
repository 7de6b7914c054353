"""Decoding that drops finished rows gives `generate`'s texts, greedy, sampled and routed per row."""

from __future__ import annotations

import pytest
from decoding_support import STEPS, batch_sizes, early_stop, reference, stopping_at
from test_adapters import EXPECTED_CLASS, ITEMS, groups

from mmunlearn.models.adapters import VLMInput
from mmunlearn.models.compact_decoding import plain_generation_config
from mmunlearn.models.row_sampling import RowSeededSampler, row_seeds

DROPPING = [f for f, cls in EXPECTED_CLASS.items() if cls.drops_finished_rows]


@pytest.mark.parametrize("family", DROPPING)
def test_greedy_decoding_drops_finished_rows_and_keeps_generates_texts(family, adapter_for):
    adapter = adapter_for(family)
    items = groups(adapter, ITEMS)[0]
    stops = early_stop(adapter, items)
    down = adapter.model.get_submodule(adapter.module_names().mlp_down[-1])
    widths: list[int] = []
    handle = down.register_forward_pre_hook(lambda module, args: widths.append(int(args[0].shape[1])))
    try:
        with stopping_at(adapter, stops), batch_sizes(adapter) as sizes:
            texts = adapter.generate(items, max_new_tokens=STEPS)
    finally:
        handle.remove()
    assert texts == reference(adapter, items, stops)
    assert sizes[0] == len(items) and min(sizes) < len(items), sizes
    assert sizes == sorted(sizes, reverse=True)
    assert set(widths) == {1}, "the prompt's last-layer MLP runs at its last position alone"


@pytest.mark.parametrize("family", DROPPING)
def test_sampled_decoding_drops_finished_rows_and_keeps_each_rows_draws(family, adapter_for):
    adapter = adapter_for(family)
    items = groups(adapter, ITEMS)[0]
    seeds = row_seeds(3, len(items))
    width = adapter.format(items, for_generation=True).inputs["input_ids"].shape[1]
    stops = early_stop(adapter, items, RowSeededSampler(seeds, width, temperature=1.5))
    with stopping_at(adapter, stops), batch_sizes(adapter) as sizes:
        texts = adapter.generate(items, max_new_tokens=STEPS, do_sample=True, temperature=1.5, seeds=seeds)
    assert texts == reference(adapter, items, stops, RowSeededSampler(seeds, width, temperature=1.5))
    assert min(sizes) < len(items), sizes


def test_shared_prefill_samples_drop_finished_rows(micro_adapter, micro_benchmark):
    items = [VLMInput(micro_benchmark.image(r.image), r.question) for r in micro_benchmark.records[:4]]
    seeds = [row_seeds(k, n) for k, n in enumerate([3, 1, 5, 2])]
    flat = [it for it, s in zip(items, seeds) for _ in s]
    flat_seeds = [x for s in seeds for x in s]
    width = micro_adapter.format(flat, for_generation=True).inputs["input_ids"].shape[1]
    stops = early_stop(micro_adapter, flat, RowSeededSampler(flat_seeds, width, temperature=1.5))
    with stopping_at(micro_adapter, stops), batch_sizes(micro_adapter) as sizes:
        shared = micro_adapter.sample(items, seeds, max_new_tokens=STEPS, temperature=1.5)
    assert [x for t in shared for x in t] == reference(micro_adapter, flat, stops,
                                                       RowSeededSampler(flat_seeds, width, temperature=1.5))
    # Each prompt runs once; its samples continue from copies of its cache, the stopped ones dropped.
    assert sizes[0] == len(items) and max(sizes[1:]) <= len(flat) and min(sizes[1:]) < len(flat), sizes
    assert sizes[1:] == sorted(sizes[1:], reverse=True)


def test_a_generation_config_with_its_own_processors_goes_through_generate(adapter_for):
    adapter = adapter_for("llava_tiny")
    config = adapter.model.generation_config
    assert plain_generation_config(config)
    saved = config.repetition_penalty
    config.repetition_penalty = 3.0
    try:
        assert not plain_generation_config(config)
        items = ITEMS
        assert adapter.generate(items, max_new_tokens=STEPS) == reference(adapter, items, adapter.stop_token_ids)
    finally:
        config.repetition_penalty = saved
