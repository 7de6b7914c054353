"""Rendering image keys in worker processes gives the one-process pixels, value for value, in order."""

import torch

from mmunlearn.models.tiny_llava import world_image_processor
from mmunlearn.pretrain import rendering
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
