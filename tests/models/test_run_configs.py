"""Packaged run configs for real models and the accelerate launcher configs parse and name known families."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmunlearn.errors import ConfigError
from mmunlearn.models.adapters import known_families
from mmunlearn.models.registry import available_run_configs, load_from_run_config, run_config

ROOT = Path(__file__).resolve().parents[2]


def test_every_real_family_has_a_run_config():
    names = available_run_configs()
    assert "tiny" not in names
    assert {"llava-1.5-7b", "llava-1.5-13b", "llava-next-7b", "qwen2-vl-7b", "idefics3-8b"} <= set(names)
    families = set(known_families())
    for name in names:
        cfg = run_config(name)
        assert cfg.family in families and cfg.dtype in ("bfloat16", "float16", "float32")
        assert "/" in cfg.path and (ROOT / cfg.accelerate_config).is_file()


def test_llava_7b_run_config():
    cfg = run_config("llava-1.5-7b")
    assert cfg.path == "llava-hf/llava-1.5-7b-hf" and cfg.family == "llava" and not cfg.trust_remote_code


def test_unknown_run_config_suggests():
    with pytest.raises(ConfigError, match="did you mean 'llava-1.5-7b'"):
        run_config("llava-1.5-7")


def test_run_config_family_must_match_checkpoint(model_dir):
    from mmunlearn.errors import MMUnlearnError

    with pytest.raises(MMUnlearnError, match="says family 'qwen2_vl'"):
        load_from_run_config("qwen2-vl-7b", path=str(model_dir("llava_tiny")), dtype="float32")
    adapter = load_from_run_config("llava-1.5-7b", path=str(model_dir("llava_tiny")), dtype="float32")
    assert adapter.batch_size == 8


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero3"])
def test_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert cfg.mixed_precision == "bf16" and cfg.num_processes >= 1
