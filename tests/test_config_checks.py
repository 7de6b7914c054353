"""Config values are held against the settings classes' type hints and bounds before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from mmunlearn.cli import main
from mmunlearn.config import load_config, model_spec, pretrain_settings, world_config
from mmunlearn.config_checks import at_least, check_values, describe, fits
from mmunlearn.errors import ConfigError
from mmunlearn.experiments.safety import run_settings, suites_and_judges
from mmunlearn.experiments.unlok import build_components, edit_overrides


@pytest.mark.parametrize(("hint", "good", "bad"), [
    (int, [0, -3, 7], [1.5, True, "3", None]),
    (float, [0, 1.5, -2, float("inf")], [float("nan"), True, "0.1", None]),
    (bool, [True, False], [1, "true", None]),
    (str, ["x", ""], [5, None, ["x"]]),
    (int | None, [None, 3], ["3", 2.5]),
    (tuple[str, ...], [[], ["a", "b"], ("a",)], ["ab", 5, [1], None]),
    (list[int], [[1, 2]], [[1, "2"], "12"]),
    (tuple[int, str], [[1, "a"]], [[1], ["a", 1]]),
    (dict[str, float], [{}, {"a": 1}], [[], {"a": "x"}]),
    (str | int | tuple[int, ...], ["all", 3, [1, 2]], [1.5, ["a"]]),
])
def test_fits_takes_what_the_hint_says(hint, good, bad):
    assert all(fits(hint, v) for v in good)
    assert not any(fits(hint, v) for v in bad)


def test_describe_reads_like_the_config():
    assert describe(int | None) == "an integer or null"
    assert describe(tuple[str, ...]) == "a list of strings"


@dataclass
class _Settings:
    steps: int = field(default=1, metadata=at_least(1))
    lr: float = field(default=0.1, metadata=at_least(0, strict=True))
    share: float = field(default=0.5, metadata=at_least(0, high=1))
    name: str = "x"


@pytest.mark.parametrize(("values", "message"), [
    ({"steps": "abc"}, "config s.steps: expected an integer, got 'abc'"),
    ({"steps": 0}, "config s.steps: must be >= 1, got 0"),
    ({"lr": 0}, "config s.lr: must be > 0, got 0"),
    ({"share": 1.5}, "config s.share: must be >= 0 and <= 1, got 1.5"),
    ({"name": None}, "config s.name: expected a string, got None"),
])
def test_check_values_names_key_and_rule(values, message):
    with pytest.raises(ConfigError) as err:
        check_values(_Settings, values, "s")
    assert str(err.value) == message


def test_check_values_leaves_good_and_unknown_keys_alone():
    check_values(_Settings, {"steps": 3, "lr": 1, "share": 0, "other": "anything"}, "s")


def test_component_messages_name_the_component():
    with pytest.raises(ConfigError, match=r"^defense 'head_projection': parameter 'k' must be an integer, got 'x'$"):
        build_components(load_config(["unlok.defense_params.head_projection.k=x"]))


def _unlok(overrides):
    cfg = load_config(overrides)
    edit_overrides(cfg, build_components(cfg)[0])


def _safety(overrides):
    cfg = load_config(overrides)
    run_settings(cfg)
    suites_and_judges(cfg)


def _pretrain(overrides):
    cfg = load_config(overrides)
    world_config(cfg)
    pretrain_settings(cfg)
    model_spec(cfg)


@pytest.mark.parametrize("check", [_unlok, _safety, _pretrain])
@pytest.mark.parametrize("model", ["tiny", "smol"])
def test_packaged_configs_pass(check, model):
    check([f"model={model}"])


@pytest.mark.parametrize(("check", "override", "key"), [
    (_unlok, "unlok.seed=abc", "unlok.seed"),
    (_unlok, "unlok.seed=-1", "unlok.seed"),
    (_unlok, "unlok.n_facts=0", "unlok.n_facts"),
    (_unlok, "unlok.n_random=-1", "unlok.n_random"),
    (_unlok, "unlok.batch_size=null", "unlok.batch_size"),
    (_unlok, "unlok.batch_facts=1.5", "unlok.batch_facts"),
    (_unlok, "unlok.defenses=5", "unlok.defenses"),
    (_unlok, "unlok.model=5", "unlok.model"),
    (_unlok, "unlok.edit.rank=1.5", "unlok.edit.rank"),
    (_unlok, "unlok.edit.alpha=null", "unlok.edit.alpha"),
    (_unlok, "unlok.edit.dropout=nan", "unlok.edit.dropout"),
    (_unlok, "unlok.edit.modules=[]", "edit.modules"),
    (_unlok, "unlok.edit.verify_restore=abc", "unlok.edit.verify_restore"),
    (_unlok, "unlok.defense_params.head_projection.k=0", "'k'"),
    (_unlok, "unlok.defense_params.input_rephrasing.prefixes=[]", "'prefixes'"),
    (_unlok, "unlok.defense_params.max_entropy.layers=top_halve", "'layers'"),
    (_unlok, "unlok.relearning.steps=abc", "unlok.relearning.steps"),
    (_unlok, "unlok.relearning.max_slot_params=0", "unlok.relearning.max_slot_params"),
    (_unlok, "+unlok.defense_edit.fact_erasure.lr=abc", "unlok.defense_edit.fact_erasure.lr"),
    (_safety, "safety.seed=abc", "safety.seed"),
    (_safety, "safety.n_eval=-1", "safety.n_eval"),
    (_safety, "safety.suites=5", "safety.suites"),
    (_safety, "safety.train.steps=1.5", "safety.train.steps"),
    (_safety, "safety.params.rank=abc", "safety.params.rank"),
    (_pretrain, "world.heldout_share=nan", "world.heldout_share"),
    (_pretrain, "world.heldout_share=-1", "world.heldout_share"),
    (_pretrain, "world.image_size=0", "world.image_size"),
    (_pretrain, "pretrain.batch_size=0", "pretrain.batch_size"),
    (_pretrain, "pretrain.lr=nan", "pretrain.lr"),
    (_pretrain, "pretrain.grad_clip=0", "pretrain.grad_clip"),
    (_pretrain, "pretrain.n_augment=null", "pretrain.n_augment"),
    (_pretrain, "pretrain.log_every=abc", "pretrain.log_every"),
    (_pretrain, "pretrain.stages=[]", "pretrain.stages"),
    (_pretrain, "pretrain.attention=eagre", "pretrain.attention"),
    (_pretrain, "pretrain.vision_warmup.renderings=1.5", "pretrain.vision_warmup.renderings"),
    (_pretrain, "model.patch_size=0", "model.patch_size"),
    (_pretrain, "model.text_heads=5", "model.text_heads"),
    (load_config, "threads=0", "config threads"),
    (load_config, "threads=abc", "config threads"),
    (load_config, "device=banana", "config device"),
])
def test_bad_value_is_a_config_error_naming_its_key(check, override, key):
    with pytest.raises(ConfigError) as err:
        check([override])
    assert key in str(err.value) and "\n" not in str(err.value)


def test_cli_refuses_a_bad_value_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["unlok", "run", "--out", str(out), "unlok.defense_params.head_projection.k=abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mmunlearn: error: defense 'head_projection': parameter 'k' must be an integer, got 'abc'"]
    assert not out.exists()


@pytest.mark.parametrize(("check", "override", "message"), [
    (_unlok, "+unlok.n_fact=3", "config unlok: unknown key(s) ['n_fact']"),
    (_unlok, "+unlok.edit.rnak=2", "config unlok.edit: unknown key(s) ['rnak']"),
    (_unlok, "+unlok.relearning.stpes=2", "config unlok.relearning: unknown key(s) ['stpes']"),
    (_safety, "+safety.n_evals=3", "config safety: unknown key(s) ['n_evals']"),
    (_safety, "+safety.train.stpes=3", "config safety.train: unknown key(s) ['stpes']"),
    (_safety, "+safety.params.rnak=3", "config safety.params: unknown key(s) ['rnak']"),
    (load_config, "+thread=3", "config: unknown key(s) ['thread']"),
    (load_config, "+unlok.n_fact=3", "config unlok: unknown key(s) ['n_fact']"),  # `pretrain` and `world` too
    (load_config, "+safety.n_evals=3", "config safety: unknown key(s) ['n_evals']"),
    (load_config, "+paths.cache=/x", "config paths: unknown key(s) ['cache']"),
])
def test_unknown_key_is_a_config_error_with_the_closest_known_one(check, override, message):
    """A key nothing reads is a typo, never silently ignored (`+unlok.n_fact=3` would run every fact)."""
    with pytest.raises(ConfigError) as err:
        check([override])
    text = str(err.value)
    assert text.startswith(message) and "did you mean" in text and "\n" not in text


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.text_layers=2"], "attack 'pd2' needs at least 3 layers, got [1, 2]"),
    (["unlok.attack_params.hp.layers=[7]"], "attack 'hp': layer 7 out of range"),
    (["unlok.edit.layers=[5]"], "unlok.edit.layers: index 5 out of range for 4"),
])
def test_layers_the_embedded_model_cannot_hold_fail_before_any_work(overrides, message):
    """The tiny model's layer count is in the config: no need to pretrain and load it to find out."""
    with pytest.raises(ConfigError) as err:
        _unlok(overrides)
    assert message in str(err.value)


def test_a_named_model_layers_are_checked_when_it_loads():
    _unlok(["model.text_layers=2", "unlok.model=some/checkpoint"])  # its layer count is not in the config
    _unlok(["model.text_layers=2", "unlok.attack_params.pd2.layers=all"])
