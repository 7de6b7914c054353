"""Shared fixtures: a micro world and micro model, built in well under a second."""

from __future__ import annotations

import pytest
import torch

from mmunlearn.models.tiny_llava import TinyLlavaSpec, build_model, build_processor, build_tokenizer
from mmunlearn.world.corpus import Corpus, Splits
from mmunlearn.world.entities import generate_world

torch.set_num_threads(2)

MICRO_SPEC = TinyLlavaSpec(image_size=16, patch_size=8, vision_hidden=16, vision_layers=1, vision_heads=2,
                           text_hidden=32, text_layers=2, text_heads=2, max_positions=128)

# Overrides that make the packaged pipeline run in seconds (used by CLI and cache tests).
MICRO_OVERRIDES = [
    "world.size=8", "world.image_size=16", "model.vision_hidden=16", "model.vision_layers=1",
    "model.vision_heads=2", "model.text_hidden=32", "model.text_layers=2", "model.text_heads=2",
    "pretrain.batch_size=16", "pretrain.stages.0.steps=3", "pretrain.stages.1.steps=3",
    "pretrain.stages.2.steps=3", "pretrain.eval_limit=8", "pretrain.n_augment=2", "pretrain.n_text_variants=2",
    "pretrain.warmup_steps=2", "pretrain.vision_warmup.steps=3", "pretrain.vision_warmup.renderings=2",
]


@pytest.fixture(scope="session")
def micro_spec() -> TinyLlavaSpec:
    return MICRO_SPEC


@pytest.fixture(scope="session")
def micro_overrides() -> list[str]:
    return list(MICRO_OVERRIDES)


@pytest.fixture(scope="session")
def micro_world():
    world = generate_world(seed=3, size=8)
    return world, Corpus(world, Splits.make(world, 0.25))


@pytest.fixture(scope="session")
def micro_tokenizer(micro_world):
    return build_tokenizer(micro_world[1].all_text())


@pytest.fixture()
def micro_model(micro_tokenizer):
    torch.manual_seed(0)
    return build_model(micro_tokenizer, MICRO_SPEC)


@pytest.fixture(scope="session")
def micro_processor(micro_tokenizer):
    return build_processor(micro_tokenizer, MICRO_SPEC)


@pytest.fixture()
def micro_adapter(micro_model, micro_processor):
    """The micro model behind the model interface every defense, attack and metric uses."""
    from mmunlearn.models.adapters.llava import LlavaAdapter

    return LlavaAdapter(micro_model, micro_processor, batch_size=16)


@pytest.fixture(scope="session")
def micro_benchmark(micro_world):
    """Eight facts of the micro world in the UnLOK-VQA record shape, images rendered at 16 px."""
    from mmunlearn.data.world_benchmark import world_benchmark

    return world_benchmark(micro_world[1], n_facts=8, seed=0, image_size=16)
