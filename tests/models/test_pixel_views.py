"""Pixel-space views of processed images (what PGD perturbs) on every family: exact round trips, or a refusal."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from vlm_fixtures import BUILDERS, make_items

from mmunlearn.errors import ConfigError, MMUnlearnError
from mmunlearn.models.adapters import VLMInput
from mmunlearn.safety.suites import get_suite

IMAGE_ITEMS = [item for item in make_items() if item.image is not None]
# Rows of these families hold several views of one image (tiles, crops, Idefics2's split views; InternVL: these
# images give 5, 3, 1 tiles).
SEVERAL_VIEWS = {"llava_next", "llava_onevision", "idefics2", "idefics3", "smolvlm", "mllama", "internvl"}


def _as_image(view: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> Image.Image:
    pixels = torch.round((view.float() * std + mean).clamp(0, 1) * 255).to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")


@pytest.mark.parametrize("family", list(BUILDERS))
def test_image_views_rebuild_the_pixel_values_or_are_refused(family, adapter_for):
    """One [3, H, W] view per image row: rebuilding the pixel values from them gives the batch's own, and the
    8-bit image of a view is processed back into the same view (PGD returns such images)."""
    adapter = adapter_for(family)
    batch = adapter.format(IMAGE_ITEMS, for_generation=False)
    if family in SEVERAL_VIEWS:
        with pytest.raises(MMUnlearnError, match="not one|no single view"):
            adapter.image_views(batch)
        return
    views = adapter.image_views(batch)
    assert len(views) == len(IMAGE_ITEMS) and all(v.dim() == 3 and v.shape[0] == 3 for v in views)
    alone = [adapter.image_views(adapter.format([item], for_generation=False))[0] for item in IMAGE_ITEMS]
    assert all(torch.equal(v, a) for v, a in zip(views, alone)), "a view is the image's own, without batch padding"
    assert torch.equal(adapter.with_image_views(batch, views)["pixel_values"], batch.inputs["pixel_values"])
    processor = adapter.image_processor
    mean = torch.tensor(processor.image_mean).reshape(-1, 1, 1)
    std = torch.tensor(processor.image_std).reshape(-1, 1, 1)
    again = adapter.image_views(adapter.format(
        [VLMInput(_as_image(v, mean, std), it.question, it.answer) for v, it in zip(views, IMAGE_ITEMS)], False))
    for view, back in zip(views, again):
        assert back.shape == view.shape
        assert torch.allclose(back, (torch.round((view * std + mean).clamp(0, 1) * 255) / 255 - mean) / std, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "gemma3", "llava15", "mistral3", "paligemma"])
def test_pgd_raises_the_answer_within_epsilon_on_single_view_families(family, adapter_for):
    """PGD through each family's view of the image: the target answer's log-probability rises, the returned
    8-bit image stays within epsilon of the start, and the model is left as it was."""
    adapter = adapter_for(family)
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    suite = get_suite("pgd_image", steps=6, epsilon=16 / 255, step_size=4 / 255)
    starts = [item.image for item in IMAGE_ITEMS[:2]]
    attacked = suite.attack_many(adapter, starts, ["what is this creature ?"] * 2, ["zorp blip", "red berries"],
                                 [1, 2])
    for _, stats in attacked:
        assert stats["logprob_after"] > stats["logprob_before"]
        assert stats["linf"] <= 16 / 255 + 1e-6
    after = adapter.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_pgd_refuses_a_family_of_tiled_images_in_one_line(adapter_for):
    adapter = adapter_for("llava_next")
    with pytest.raises(ConfigError, match="suite 'pgd_image' attacks one image view per row.*leave it out"):
        get_suite("pgd_image", steps=1).attack_many(adapter, [IMAGE_ITEMS[0].image], ["what ?"], ["red"], [0])
