"""Rendering image keys: worker processes give the one-process pixels, value for value, in order; the skipped
no-op processor steps and the kept typography glyphs change no pixel."""

import random

import numpy as np
import torch

from mmunlearn.models.tiny_llava import world_image_processor
from mmunlearn.pretrain import rendering
from mmunlearn.world import render
from mmunlearn.world.corpus import ImageKey
from mmunlearn.world.images import augment_view


def test_worker_processes_render_the_same_pixels_in_the_same_order(micro_world, micro_spec, monkeypatch):
    world, _ = micro_world
    size = micro_spec.image_size
    keys = [ImageKey("creature", c.index, view) for c in world.creatures
            for view in ("canon", "hard", augment_view(3), augment_view(7, 0.5, 1.0))]
    keys += [ImageKey("text", words=("steps", "to", "brew"), variant=v) for v in (0, 1, 2)]
    processor = world_image_processor(size)
    alone = rendering.render_keys(world, processor, size, keys, workers=1)
    monkeypatch.setattr(rendering, "CHUNK", 5)  # several chunks per worker, the last one short
    monkeypatch.setattr(rendering, "PARALLEL_MIN", 1)
    pooled = rendering.render_keys(world, processor, size, keys, workers=2)
    assert alone.shape == (len(keys), 3, size, size) and alone.dtype == torch.float32
    assert torch.equal(alone, pooled)
    expected = processor(images=[rendering.render_key(world, keys[-1], size)], return_tensors="pt")["pixel_values"]
    assert torch.equal(alone[-1:], expected)


def test_renderings_skip_only_the_no_op_resize_and_keep_the_processors_pixels(micro_world, micro_spec):
    world, _ = micro_world
    size = micro_spec.image_size
    keys = [ImageKey("creature", c.index, view) for c in world.creatures for view in ("canon", "hard")]
    keys += [ImageKey("text", words=("steps", "to", "brew"), variant=1)]
    processor = world_image_processor(size)
    assert rendering.same_size_kwargs(processor, size) == {"do_resize": False, "do_center_crop": False}
    images = [rendering.render_key(world, key, size) for key in keys]
    full = processor(images=images, return_tensors="pt")["pixel_values"]
    assert torch.equal(rendering.render_keys(world, processor, size, keys), full)
    # a processor that really resizes (to twice the rendering's side) keeps its resize
    larger = world_image_processor(2 * size)
    assert rendering.same_size_kwargs(larger, size) == {}
    resized = rendering.render_keys(world, larger, size, keys)
    assert resized.shape == (len(keys), 3, 2 * size, 2 * size)
    assert torch.equal(resized, larger(images=images, return_tensors="pt")["pixel_values"])


def test_typography_cards_are_the_same_with_kept_glyphs():
    cards = [(["steps", "to", "brew"], None), (["steps", "to", "brew"], 3), (["brew"], 3), (["to", "steps"], 8)]
    render._glyphs.cache_clear()
    anew = []
    for lines, seed in cards:
        render._glyphs.cache_clear()
        anew.append(np.asarray(render.render_text(lines, 16, None if seed is None else random.Random(seed))))
    kept = [np.asarray(render.render_text(lines, 16, None if seed is None else random.Random(seed)))
            for lines, seed in cards * 2]
    assert render._glyphs.cache_info().hits > 0
    for card, again in zip(anew * 2, kept):
        assert np.array_equal(card, again)
