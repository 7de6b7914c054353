"""Loading errors are one line and name what is wrong; the registry picks families by model_type only."""

from __future__ import annotations

import json

import pytest

from mmunlearn.errors import MMUnlearnError
from mmunlearn.models.adapters import adapter_class, known_families, load_adapter, register_adapter
from mmunlearn.models.adapters.base import VLMAdapter, resolve_dtype


def test_known_families_cover_the_issue():
    assert {"llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics2", "idefics3",
            "smolvlm", "mllama", "gemma3", "internvl", "mistral3", "paligemma"} <= set(known_families())


def test_unknown_model_type_is_one_line_with_suggestion(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_nxt"}))
    with pytest.raises(MMUnlearnError) as err:
        load_adapter(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "'llava_nxt'" in message and "did you mean 'llava_next'" in message and "qwen2_vl" in message


def test_adapter_class_without_close_match():
    with pytest.raises(MMUnlearnError, match="known families") as err:
        adapter_class("totally_different")
    assert "did you mean" not in str(err.value)


def test_family_is_chosen_by_model_type_not_name(tmp_path, model_dir):
    # A LLaVA checkpoint in a directory named like Qwen is still served by the LLaVA adapter.
    import shutil

    target = tmp_path / "Qwen2-VL-7B-Instruct"
    shutil.copytree(model_dir("llava_tiny"), target)
    assert type(load_adapter(target)).__name__ == "LlavaAdapter"


def test_missing_local_directory_is_one_line(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(MMUnlearnError) as err:
        load_adapter(missing)
    assert str(err.value) == f"model directory not found: {missing}"


def test_offline_hub_id_without_local_copy_names_the_model():
    with pytest.raises(MMUnlearnError) as err:
        load_adapter("mmunlearn-test/no-such-vlm", local_files_only=True)
    message = str(err.value)
    assert "\n" not in message and "'mmunlearn-test/no-such-vlm'" in message and "offline" in message


def test_bad_dtype_is_a_config_error():
    with pytest.raises(MMUnlearnError, match="dtype 'float8'"):
        resolve_dtype("float8")


def test_duplicate_registration_is_refused():
    with pytest.raises(MMUnlearnError, match="already served"):
        @register_adapter("llava")
        class Other(VLMAdapter):  # noqa: F841
            pass


def test_bf16_load(model_dir):
    import torch

    adapter = load_adapter(model_dir("llava_tiny"), dtype="bf16")
    assert adapter.dtype == torch.bfloat16
    batch = adapter.format([adapter_items()[0]], for_generation=True)
    assert batch.inputs["pixel_values"].dtype == torch.bfloat16
    assert len(adapter.generate(adapter_items()[:1], max_new_tokens=2)) == 1


def test_device_map_load(model_dir):
    adapter = load_adapter(model_dir("qwen2_vl"), device_map={"": "cpu"})
    assert adapter.device.type == "cpu"
    assert len(adapter.generate(adapter_items()[:2], max_new_tokens=2)) == 2


def adapter_items():
    from vlm_fixtures import make_items

    return make_items()
