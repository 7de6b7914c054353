"""The prefix cache gives the same loss and gradients as the full forward when the bottom layers are frozen."""

from __future__ import annotations

import random

import pytest
import torch
from smol_standin import build_standin

from mmunlearn.models.smol_llava import SmolLlavaSpec, build_model, build_processor, load_language_model, render_prompt
from mmunlearn.pretrain.batches import Encoder, PixelBank
from mmunlearn.pretrain.prefix_cache import PrefixCache
from mmunlearn.pretrain.smol import LoraSettings, add_lora
from mmunlearn.pretrain.trainer import sparse_answer_loss

SPEC = SmolLlavaSpec(language_model="unused", image_size=16, patch_size=8, vision_hidden=16, vision_layers=1,
                     vision_heads=2)


@pytest.fixture()
def top_lora_model(tmp_path, micro_world):
    tokenizer, lm = load_language_model(build_standin(tmp_path, list(micro_world[1].all_text())))
    torch.manual_seed(0)
    model = build_model(tokenizer, lm, SPEC)
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = add_lora(model, LoraSettings(rank=2, alpha=4, layers="2:3"))
    for name, p in peft_model.named_parameters():  # a non-zero LoRA, so the top layer differs from the base
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    encoder = Encoder(tokenizer, SPEC.image_seq_length, PixelBank(micro_world[0], build_processor(
        tokenizer, SPEC).image_processor, 16), 2, 2, render=render_prompt)
    return peft_model.get_base_model(), encoder


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_cached_prefix_matches_the_full_forward(top_lora_model, micro_world):
    model, encoder = top_lora_model
    examples = list(micro_world[1].text_facts("train"))[:6] + list(micro_world[1].hazards_text("train"))[:3]
    batch = encoder.collate(examples, random.Random(0))
    full_loss, full_hits = sparse_answer_loss(model, batch)
    full_loss.backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    cache = PrefixCache(model, n_frozen=2)
    for _ in range(2):  # the second pass reads the cache only
        loss, hits = sparse_answer_loss(model, batch, cache.last_hidden(batch.input_ids, batch.attention_mask))
        assert len(cache) == len(examples)
        torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-5)
        assert hits == full_hits
        loss.backward()
        got = grads(model)
        assert set(got) == set(expected) and expected
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)
        model.zero_grad(set_to_none=True)


def test_a_trainable_layer_below_the_cache_is_refused(top_lora_model):
    model, _ = top_lora_model
    with pytest.raises(ValueError, match="below them trains"):
        PrefixCache(model, n_frozen=3)
