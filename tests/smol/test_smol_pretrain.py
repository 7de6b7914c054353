"""The smol pretraining pipeline end to end on the micro world, with a tiny random Llama as the LM."""

from __future__ import annotations

import pytest
from smol_standin import build_standin

from mmunlearn.config import load_config, model_spec
from mmunlearn.errors import ConfigError
from mmunlearn.pretrain.pipeline import load_pretrained, pretrain


@pytest.fixture(scope="module")
def smol_overrides(tmp_path_factory, micro_world) -> list[str]:
    lm = build_standin(tmp_path_factory.mktemp("lm"), list(micro_world[1].all_text()))
    return ["model=smol", f"model.language_model={lm}", "world.size=8", "world.image_size=16",
            "model.vision_hidden=16", "model.vision_layers=1", "model.vision_heads=2", "pretrain.batch_size=8",
            "pretrain.stages.0.steps=3", "pretrain.stages.1.steps=2", "pretrain.warmup_steps=1",
            "pretrain.align.steps=40", "pretrain.align.batch_size=16", "pretrain.align.warmup_steps=2",
            "pretrain.eval_limit=4", "pretrain.n_augment=2", "pretrain.n_text_variants=2", "pretrain.log_every=10",
            "pretrain.lora.layers=1:3", "pretrain.lora.rank=2", "pretrain.frozen_layers=1"]


def test_smol_pretrain_writes_a_loadable_model_and_reuses_it(smol_overrides, tmp_path):
    cfg = load_config([*smol_overrides, f"paths.cache_dir={tmp_path}"])
    messages: list[str] = []
    first = pretrain(cfg, log=messages.append)
    assert not first.reused and first.path.name.startswith("smol-")
    align = first.report["align_log"]
    assert align[-1]["ce"] < align[0]["ce"]  # image slots move toward the words' embeddings
    assert set(first.report["measures"]) >= {"naming", "text_facts", "harmful_text_refused"}
    model, processor = load_pretrained(first.path)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert not any("lora" in name for name in model.state_dict())  # LoRA merged before saving
    again = pretrain(cfg, log=messages.append)
    assert again.reused and again.path == first.path


def test_model_kind_is_checked(smol_overrides):
    with pytest.raises(ConfigError, match="model.kind"):
        model_spec(load_config([*smol_overrides, "model.kind=big"]))


def test_the_tiny_model_stays_the_default():
    assert type(model_spec(load_config())).__name__ == "TinyLlavaSpec"
    assert type(model_spec(load_config(["model=smol"]))).__name__ == "SmolLlavaSpec"


def test_a_frozen_prefix_over_lora_layers_is_a_config_error(smol_overrides, tmp_path):
    cfg = load_config([*smol_overrides, "pretrain.frozen_layers=2", f"paths.cache_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="pretrain.frozen_layers"):
        pretrain(cfg, log=lambda _: None)
