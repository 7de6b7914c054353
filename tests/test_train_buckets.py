"""How a training batch is cut into length buckets, and the attention kernel used while training: both change the
arithmetic's cost, not what one step computes."""

import dataclasses
import itertools
import random

import pytest
import torch

from mmunlearn.config import load_config, model_spec, pretrain_settings, world_config
from mmunlearn.errors import ConfigError
from mmunlearn.pretrain.batches import Encoder, PixelBank
from mmunlearn.pretrain.pipeline import cache_key
from mmunlearn.pretrain.tasks import training_pools
from mmunlearn.pretrain.trainer import (
    GroundingHook,
    Stage,
    TrainConfig,
    attention_kernel,
    bucket_cuts,
    least_padding_cuts,
    sample_batch,
    train,
    train_step,
)


def _padded(lengths: list[int], cuts: list[tuple[int, int]]) -> int:
    return sum((b - a) * lengths[b - 1] for a, b in cuts)


def _brute_force(lengths: list[int], buckets: int) -> int:
    n = len(lengths)
    best = n * lengths[-1]
    for runs in range(2, buckets + 1):
        for inner in itertools.combinations(range(1, n), runs - 1):
            bounds = [0, *inner, n]
            best = min(best, _padded(lengths, list(zip(bounds, bounds[1:]))))
    return best


def test_least_padding_cuts_are_the_cheapest_contiguous_split():
    rng = random.Random(0)
    for _ in range(40):
        lengths = sorted(rng.choice([13, 14, 20, 31, 34, 56, 76]) for _ in range(rng.randint(1, 9)))
        for buckets in (1, 2, 3, 4):
            cuts = least_padding_cuts(lengths, buckets)
            assert 1 <= len(cuts) <= buckets
            assert cuts[0][0] == 0 and cuts[-1][1] == len(lengths)
            assert all(a < b for a, b in cuts) and all(x[1] == y[0] for x, y in zip(cuts, cuts[1:]))
            assert _padded(lengths, cuts) == _brute_force(lengths, buckets)
    assert least_padding_cuts([], 2) == []


def test_a_few_long_rows_get_their_own_bucket():
    lengths = [20] * 120 + [76] * 8
    assert bucket_cuts(lengths, 2, "padding") == [(0, 120), (120, 128)]
    assert bucket_cuts(lengths, 2, "rows") == [(0, 64), (64, 128)]
    assert _padded(lengths, bucket_cuts(lengths, 2, "padding")) == 120 * 20 + 8 * 76


def _encoder_and_names(world, processor, tokenizer) -> tuple[Encoder, dict[int, int]]:
    size = processor.image_processor.crop_size["height"]
    encoder = Encoder(tokenizer, (size // 8) ** 2, PixelBank(world, processor.image_processor, size),
                      n_augment=3, n_text_variants=2)
    return encoder, {c.index: tokenizer.convert_tokens_to_ids(c.name) for c in world.creatures}


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_one_step_computes_the_same_loss_and_gradient_however_it_is_bucketed_and_whichever_kernel_runs(
        micro_world, micro_processor, micro_tokenizer, micro_model):
    corpus = micro_world[1]
    encoder, name_ids = _encoder_and_names(micro_world[0], micro_processor, micro_tokenizer)
    stage = Stage("all", 1, {"naming": 2, "text_fact": 2, "image_fact": 1, "hazard_text": 1}, ground_weight=1.0)
    examples = sample_batch(training_pools(corpus), stage.weights, 24, random.Random(3))
    lengths = sorted(len(encoder.encode(ex)[0]) for ex in examples)
    assert bucket_cuts(lengths, 2, "padding") != bucket_cuts(lengths, 2, "rows")  # the two really cut differently
    hook = GroundingHook(micro_model.model.multi_modal_projector)
    results = {}
    for split, attention in (("rows", "sdpa"), ("padding", "sdpa"), ("padding", "eager")):
        config = TrainConfig(buckets=2, bucket_split=split, attention=attention)
        micro_model.zero_grad(set_to_none=True)
        with attention_kernel(micro_model, attention):
            out = train_step(micro_model, encoder, examples, stage, config, hook, name_ids, {}, random.Random(5))
        results[(split, attention)] = out, _grads(micro_model)
    hook.remove()
    (loss, ground, acc), grads = results[("rows", "sdpa")]
    assert loss > 0 and grads
    for (other_loss, other_ground, other_acc), other_grads in list(results.values())[1:]:
        assert other_loss == pytest.approx(loss, rel=1e-5) and other_ground == pytest.approx(ground, rel=1e-5)
        assert other_acc == acc
        for name, g in grads.items():
            torch.testing.assert_close(other_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_training_restores_the_models_kernel_and_a_bad_kernel_is_a_config_error(
        micro_world, micro_processor, micro_tokenizer, micro_model):
    corpus = micro_world[1]
    encoder, name_ids = _encoder_and_names(micro_world[0], micro_processor, micro_tokenizer)
    seen = []
    config = TrainConfig(batch_size=8, warmup_steps=1, attention="eager", bucket_split="padding",
                         stages=[Stage("all", 2, {"naming": 1, "text_fact": 1})])
    train(micro_model, encoder, training_pools(corpus), config, name_ids,
          progress=lambda _: seen.append(micro_model.model.vision_tower.config._attn_implementation))
    assert seen == ["eager", "eager"]
    assert micro_model.config._attn_implementation == "sdpa"
    assert micro_model.model.language_model.config._attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match="pretrain.attention") as info:
        train(micro_model, encoder, training_pools(corpus), dataclasses.replace(config, attention="no-such-kernel"),
              name_ids)
    assert "\n" not in str(info.value)
    assert micro_model.config._attn_implementation == "sdpa"


def test_bucket_settings_are_checked_and_change_the_cache_key(micro_overrides):
    with pytest.raises(ConfigError, match="pretrain.bucket_split"):
        pretrain_settings(load_config([*micro_overrides, "pretrain.bucket_split=shortest"]))
    with pytest.raises(ConfigError, match="pretrain.buckets"):
        pretrain_settings(load_config([*micro_overrides, "pretrain.buckets=0"]))
    keys = set()
    for split in ("rows", "padding"):
        cfg = load_config([*micro_overrides, f"pretrain.bucket_split={split}"])
        keys.add(cache_key(world_config(cfg), model_spec(cfg), pretrain_settings(cfg)))
    assert len(keys) == 2
