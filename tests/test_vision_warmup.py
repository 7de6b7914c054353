"""The vision warm-up: identity training of the tower alone, before the curriculum."""

import dataclasses

import pytest
import torch
from transformers import CLIPVisionModel

from mmunlearn.config import load_config, model_spec, pretrain_settings, world_config
from mmunlearn.errors import ConfigError
from mmunlearn.models.tiny_llava import vision_config, world_image_processor
from mmunlearn.pretrain.batches import PixelBank
from mmunlearn.pretrain.pipeline import _key_fields, cache_key, pretrain
from mmunlearn.pretrain.vision_warmup import (
    VisionWarmup,
    identity_logits,
    identity_set,
    lr_schedule,
    train_identity,
)
from mmunlearn.world.images import training_view
from mmunlearn.world.render import render_creature


class _Tokenizer:
    pad_token_id = 0

SETTINGS = VisionWarmup(steps=40, renderings=3, batch_size=16, lr=1e-2)


def bank_of(world, spec, workers: int = 1) -> PixelBank:
    return PixelBank(world, world_image_processor(spec.image_size), spec.image_size, workers)


def trained(micro_world, micro_spec):
    world, _ = micro_world
    pixels, labels = identity_set(bank_of(world, micro_spec), SETTINGS)
    torch.manual_seed(0)
    tower = CLIPVisionModel(vision_config(micro_spec))
    losses = []
    head = train_identity(tower, pixels, labels, len(world.creatures), SETTINGS, seed=0, weight_decay=0.0,
                          grad_clip=1.0, on_step=lambda step, loss: losses.append(loss))
    return tower, head, pixels, labels, losses


def test_identity_set_is_canonical_plus_renderings_per_creature(micro_world, micro_spec):
    world, _ = micro_world
    pixels, labels = identity_set(bank_of(world, micro_spec), SETTINGS)
    n = len(world.creatures) * (SETTINGS.renderings + 1)
    assert pixels.shape == (n, 3, micro_spec.image_size, micro_spec.image_size)
    assert labels.tolist() == [c.index for c in world.creatures for _ in range(SETTINGS.renderings + 1)]
    views = [training_view(world.seed, c.index, k, SETTINGS.occlusion, SETTINGS.style)
             for c in world.creatures for k in range(SETTINGS.renderings + 1)]
    for row in (0, 1, n - 1):  # the warm-up's own training views, canonical first
        expected = world_image_processor(micro_spec.image_size)(
            images=[render_creature(world.creatures[labels[row].item()], micro_spec.image_size, views[row])],
            return_tensors="pt")["pixel_values"][0]
        assert torch.equal(pixels[row], expected)


def test_the_curriculum_names_creatures_on_the_warm_up_renderings_without_drawing_them_again(micro_world,
                                                                                             micro_spec,
                                                                                             monkeypatch):
    """A task drawing as many renderings at the warm-up's chances resolves to keys the bank already holds."""
    import random

    from mmunlearn.pretrain.batches import Encoder, TaskAugment

    world, corpus = micro_world
    bank = bank_of(world, micro_spec)
    pixels, _ = identity_set(bank, SETTINGS)
    encoder = Encoder(_Tokenizer(), micro_spec.image_seq_length, bank, n_augment=2, n_text_variants=1,
                      task_augment={"naming": TaskAugment(SETTINGS.renderings, SETTINGS.occlusion, SETTINGS.style)})
    monkeypatch.setattr("mmunlearn.pretrain.batches.render_keys", lambda *a, **k: pytest.fail("rendered again"))
    rng = random.Random(0)
    ex = next(corpus.naming("train"))
    keys = [encoder.resolve(ex.image, rng, ex.task) for _ in range(20)]
    assert len(set(keys)) > 1 and bank.pixels(keys).shape[0] == 20


def test_identity_training_learns_and_is_deterministic(micro_world, micro_spec):
    tower, head, pixels, labels, losses = trained(micro_world, micro_spec)
    assert len(losses) == SETTINGS.steps
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    with torch.no_grad():
        accuracy = (identity_logits(tower.eval(), head, pixels).argmax(-1) == labels).float().mean().item()
    assert accuracy > 0.8
    again = trained(micro_world, micro_spec)[0]
    for (name, a), (_, b) in zip(tower.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_rendering_chances_are_parameters_and_defaults_keep_the_views():
    assert training_view(0, 3, 5) == training_view(0, 3, 5, occlusion=0.25, style=0.25, max_strength=0.9)
    views = [training_view(0, c, k, occlusion=1.0, style=0.0) for c in range(4) for k in range(1, 6)]
    assert all(v.occlusion > 0 and not v.outline for v in views)


def test_a_strength_power_below_one_favours_strong_changes_and_names_its_own_renderings(micro_world):
    import statistics

    from mmunlearn.world.corpus import ImageKey
    from mmunlearn.world.images import augment_view, render_key

    assert training_view(0, 3, 5, strength_power=1.0) == training_view(0, 3, 5)
    turn = {p: statistics.mean(abs(training_view(0, c, k, strength_power=p).angle)
                               for c in range(10) for k in range(1, 40)) for p in (1.0, 0.4)}
    assert turn[0.4] > 1.2 * turn[1.0]
    assert augment_view(5, 0.5, 0.5) == "aug:5:0.5:0.5" and augment_view(5, 0.5, 0.5, 0.4) == "aug:5:0.5:0.5:0.4"
    world, _ = micro_world
    c = world.creatures[1]
    drawn = render_key(world, ImageKey("creature", c.index, augment_view(5, 0.5, 0.5, 0.4)), 32)
    assert drawn.tobytes() == render_creature(c, 32, training_view(world.seed, c.index, 5, 0.5, 0.5,
                                                                   strength_power=0.4)).tobytes()
    assert drawn.tobytes() != render_key(world, ImageKey("creature", c.index, augment_view(5, 0.5, 0.5)), 32).tobytes()
    with pytest.raises(ConfigError, match=r"strength_power=0 \(> 0\)"):
        VisionWarmup(strength_power=0)


def test_config_is_checked():
    packaged = VisionWarmup(steps=6000, renderings=2000, schedule="cosine", rehearsal=64,
                            rehearsal_weight=3.0, label_smoothing=0.1)  # conf/pretrain/default.yaml
    assert pretrain_settings(load_config([])).vision_warmup == packaged
    assert pretrain_settings(load_config(["pretrain.vision_warmup=null"])).vision_warmup is None
    on = pretrain_settings(load_config(["pretrain.vision_warmup.steps=7"])).vision_warmup
    assert on == dataclasses.replace(packaged, steps=7)
    with pytest.raises(ConfigError, match=r"pretrain.vision_warmup.*unknown key.*stpes"):
        pretrain_settings(load_config(["+pretrain.vision_warmup.stpes=7"]))
    with pytest.raises(ConfigError, match=r"pretrain.vision_warmup: renderings=-1 \(>= 0\), occlusion=1.5") as info:
        pretrain_settings(load_config(["pretrain.vision_warmup.renderings=-1", "pretrain.vision_warmup.occlusion=1.5"]))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"schedule='linear' \(one of constant, cosine\)"):
        pretrain_settings(load_config(["pretrain.vision_warmup.schedule=linear"]))


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_learning_rate_schedule(schedule):
    settings = VisionWarmup(steps=100, lr=1e-2, schedule=schedule)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=settings.lr)
    scheduler, rates = lr_schedule(optimizer, settings), []
    for _ in range(settings.steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    if schedule == "constant":
        assert rates == [settings.lr] * settings.steps
    else:  # a 5-step linear warm-up to the peak, then cosine down to (nearly) zero
        assert rates[0] == 0 and rates[5] == pytest.approx(settings.lr)
        assert all(a >= b for a, b in zip(rates[5:], rates[6:])) and rates[-1] < 0.01 * settings.lr


def test_pipeline_warms_the_tower_up_and_keys_the_cache_on_it(tmp_path, micro_overrides):
    base = [*micro_overrides, f"paths.cache_dir={tmp_path}"]
    plain = pretrain(load_config([*base, "pretrain.vision_warmup=null"]), log=lambda s: None)
    lines: list[str] = []
    warmed = pretrain(load_config(base), log=lines.append)
    assert warmed.path != plain.path and not warmed.reused
    assert any(line.startswith("vision warm-up step 3/3") for line in lines)
    assert [e["step"] for e in warmed.report["vision_warmup_log"]] == [1, 2, 3]  # the loss log is in the report
    assert "vision_warmup_log" not in plain.report


def test_label_smoothing_caps_the_heads_confidence_and_is_checked(micro_world, micro_spec):
    world, _ = micro_world
    pixels, labels = identity_set(bank_of(world, micro_spec), SETTINGS)
    confidence = {}
    for smoothing in (0.0, 0.5):
        torch.manual_seed(0)
        tower = CLIPVisionModel(vision_config(micro_spec))
        settings = dataclasses.replace(SETTINGS, steps=80, label_smoothing=smoothing)
        head = train_identity(tower, pixels, labels, len(world.creatures), settings, seed=0, weight_decay=0.0,
                              grad_clip=1.0)
        with torch.no_grad():
            probs = identity_logits(tower.eval(), head, pixels).softmax(-1)
        confidence[smoothing] = probs.max(-1).values.mean().item()
    # the smoothed target puts 1 - 0.5 + 0.5 / 8 on the creature: its optimum is far from certainty
    assert confidence[0.5] < 0.7 < confidence[0.0]
    with pytest.raises(ConfigError, match=r"label_smoothing=1.0 \(in \[0, 1\)\)"):
        VisionWarmup(label_smoothing=1.0)


def test_label_smoothing_at_zero_keeps_the_cache_key(micro_overrides):
    """Models cached before the option existed (smoothing off) keep their key; every other value has its own."""
    def key_parts(value: str):
        cfg = load_config([*micro_overrides, f"pretrain.vision_warmup.label_smoothing={value}"])
        return world_config(cfg), model_spec(cfg), pretrain_settings(cfg)

    assert "label_smoothing" not in _key_fields(dataclasses.asdict(key_parts("0.0")[2]))["vision_warmup"]
    assert len({cache_key(*key_parts(value)) for value in ("0.0", "0.05", "0.1")}) == 3
