"""Hydra composition of the packaged configs, with user overrides, into typed settings.

Errors come back as `ConfigError` with one line naming the key, never a Hydra traceback.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mmunlearn.config_checks import at_least, check_known, check_values, field_hints
from mmunlearn.errors import ConfigError
from mmunlearn.models.smol_llava import SmolLlavaSpec
from mmunlearn.models.tiny_llava import TinyLlavaSpec
from mmunlearn.pretrain.batches import TaskAugment
from mmunlearn.pretrain.smol import AlignConfig, LoraSettings
from mmunlearn.pretrain.trainer import Stage, TrainConfig
from mmunlearn.pretrain.vision_warmup import VisionWarmup

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024  # pixels a side: a creature needs a few pixels; 1024 covers every family


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    size: int = 100
    heldout_share: float = 0.2
    image_size: int = 32

    def __post_init__(self) -> None:
        if not 0 <= self.heldout_share < 1:  # NaN fails too
            raise ConfigError(f"config world.heldout_share={self.heldout_share!r}: must be a share in [0, 1)")
        if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise ConfigError(f"config world.image_size={self.image_size!r}: must be an integer in "
                              f"[{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")


@dataclass(frozen=True)
class PretrainSettings:
    train: TrainConfig
    n_augment: int = field(metadata=at_least(1))
    n_text_variants: int = field(metadata=at_least(1))
    eval_limit: int = field(metadata=at_least(1))
    log_every: int = field(metadata=at_least(1))
    align: AlignConfig | None = None  # smol model only: the vision alignment stage
    lora: LoraSettings | None = None  # smol model only: the LoRA that teaches the LM the world
    vision_warmup: VisionWarmup | None = None  # tiny model only: identity training of the tower first
    task_augment: dict[str, TaskAugment] = dataclasses.field(default_factory=dict)  # tasks' own renderings


def _first_message(exc: BaseException) -> str:
    """The most specific message along the exception chain, on one line."""
    messages = []
    while exc is not None:
        text = str(exc).strip()
        if text:
            messages.append(" ".join(text.split()))
        exc = exc.__cause__ or exc.__context__
    return messages[0] if messages else "invalid configuration"


def load_config(overrides: list[str] | None = None) -> DictConfig:
    overrides = list(overrides or [])
    try:
        with initialize_config_module(config_module="mmunlearn.conf", version_base=None):
            cfg = compose(config_name="config", overrides=overrides)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"config: {_first_message(exc)}") from None
    _include(cfg, "safety", "data")
    _check_section_keys(cfg)
    check_values(TopKeys, {k: cfg.get(k) for k in ("threads", "device")}, "")
    device_named(cfg)  # a name torch knows; whether this machine has it is checked where a model runs
    return cfg


def _check_section_keys(cfg: DictConfig) -> None:
    """A key no code reads is a typo, whichever command loads the config: the top level, `paths`, and the
    track sections' own keys (their values, and the world, model and pretraining sections, are checked where
    they are read)."""
    from mmunlearn.experiments.safety import SafetyKeys
    from mmunlearn.experiments.unlok import unlok_keys

    check_known(cfg, [*SECTIONS, *(f.name for f in dataclasses.fields(TopKeys))], "")
    check_known(cfg.paths, ("cache_dir", "output_dir"), "paths")
    check_known(cfg.unlok, unlok_keys(), "unlok")
    check_known(cfg.safety, [f.name for f in dataclasses.fields(SafetyKeys)], "safety")


def _include(cfg: DictConfig, section: str, key: str) -> None:
    """`<section>.<key>=FILE.yaml` stands for the mapping in that file (relative to the working directory), put in
    its place here: the run's manifest and config hash then hold what the file said, not its name."""
    value = cfg[section].get(key)
    if not isinstance(value, str):
        return
    path = Path(value).expanduser()
    try:
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OSError, OmegaConfBaseException, yaml.YAMLError) as exc:
        raise ConfigError(f"config {section}.{key}: cannot read {path}: {_first_message(exc)}") from None
    if not isinstance(node, dict):
        raise ConfigError(f"config {section}.{key}: {path} holds {type(node).__name__}, not a mapping")
    with open_dict(cfg[section]):
        cfg[section][key] = node


SECTIONS = ("world", "pretrain", "model", "unlok", "safety", "paths")  # each checked by the code that reads it


@dataclasses.dataclass
class TopKeys:
    """The config's own keys besides its sections, checked whenever a config is loaded."""

    threads: int = dataclasses.field(default=2, metadata=at_least(1))
    device: str = "cpu"


def _build(cls, node: Any, where: str):
    if not isinstance(node, dict):
        raise ConfigError(f"config {where}: expected a mapping, got {type(node).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(node) - set(fields))
    if unknown:
        raise ConfigError(f"config {where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    check_values(cls, node, where)
    hints = field_hints(cls)
    return cls(**{name: float(value) if hints[name] is float else value for name, value in node.items()})


def world_config(cfg: DictConfig) -> WorldConfig:
    return _build(WorldConfig, OmegaConf.to_container(cfg.world), "world")


MODEL_KINDS = {"tiny": TinyLlavaSpec, "smol": SmolLlavaSpec}


def model_spec(cfg: DictConfig) -> TinyLlavaSpec | SmolLlavaSpec:
    """The embedded model's spec; `model.kind` picks which (tiny when absent)."""
    node = dict(OmegaConf.to_container(cfg.model))
    kind = node.get("kind", "tiny")
    if kind not in MODEL_KINDS:
        raise ConfigError(f"config model.kind={kind!r}: known kinds {sorted(MODEL_KINDS)}")
    if kind == "tiny":
        node.pop("kind", None)  # the tiny spec's cache key predates the field
    spec = _build(MODEL_KINDS[kind], node, "model")
    if spec.image_size % spec.patch_size:
        raise ConfigError(f"config model.patch_size={spec.patch_size}: must divide image_size={spec.image_size}")
    for side in ("vision", "text"):
        hidden, heads = getattr(spec, f"{side}_hidden", None), getattr(spec, f"{side}_heads", None)
        if hidden is not None and heads is not None and hidden % heads:
            raise ConfigError(f"config model.{side}_heads={heads}: must divide {side}_hidden={hidden}")
    return spec


def _task_augment(node: dict) -> dict[str, TaskAugment]:
    """Each entry: a number of renderings, or {renderings, occlusion, style, strength_power}."""
    from mmunlearn.pretrain.tasks import TRAINING_TASKS

    known = ["occlusion", "renderings", "strength_power", "style"]
    out = {}
    for task, value in node.items():
        where = f"pretrain.task_augment.{task}"
        if task not in TRAINING_TASKS:
            raise ConfigError(f"config {where}: not a training task ({', '.join(TRAINING_TASKS)})")
        fields = value if isinstance(value, dict) else {"renderings": value}
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ConfigError(f"config {where}: unknown key(s) {unknown}; known: {known}")
        n = fields.get("renderings")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"config {where}.renderings: must be a whole number >= 1, got {n!r}")
        for name in ("occlusion", "style"):
            p = fields.get(name, 0.0)
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
                raise ConfigError(f"config {where}.{name}: must be a chance in [0, 1], got {p!r}")
        power = fields.get("strength_power", 1.0)
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 0:
            raise ConfigError(f"config {where}.strength_power: must be a number > 0, got {power!r}")
        out[task] = TaskAugment(n, **{k: float(fields[k]) for k in ("occlusion", "style", "strength_power")
                                      if k in fields})
    return out


def pretrain_settings(cfg: DictConfig) -> PretrainSettings:
    node = dict(OmegaConf.to_container(cfg.pretrain))
    extra = {k: node.pop(k) for k in ("n_augment", "n_text_variants", "eval_limit", "log_every", "task_augment")
             if k in node}
    align = _build(AlignConfig, node.pop("align"), "pretrain.align") if "align" in node else None
    lora = _build(LoraSettings, node.pop("lora"), "pretrain.lora") if "lora" in node else None
    vision = node.pop("vision_warmup", None)
    vision = _build(VisionWarmup, vision, "pretrain.vision_warmup") if vision is not None else None
    stages_node = node.pop("stages", [])
    if not isinstance(stages_node, list) or not stages_node:
        raise ConfigError(f"config pretrain.stages: expected a non-empty list of stages, got {stages_node!r}")
    check_values(PretrainSettings, extra, "pretrain")
    stages = []
    for i, st in enumerate(stages_node):
        where = f"pretrain.stages[{i}]"
        if not isinstance(st, dict) or not {"name", "steps", "weights"} <= set(st):
            raise ConfigError(f"config {where}: needs name, steps and weights")
        unknown = sorted(set(st) - {"name", "steps", "weights", "ground_weight"})
        if unknown:
            raise ConfigError(f"config {where}: unknown key(s) {unknown}")
        check_values(Stage, st, where)
        stages.append(Stage(name=str(st["name"]), steps=st["steps"],
                            weights={k: float(v) for k, v in st["weights"].items()},
                            ground_weight=float(st.get("ground_weight", 0.0))))
    train = _build(TrainConfig, node, "pretrain")
    train = dataclasses.replace(train, stages=stages)
    return PretrainSettings(train=train, n_augment=extra.get("n_augment", 16),
                            n_text_variants=extra.get("n_text_variants", 8),
                            eval_limit=extra.get("eval_limit", 600), log_every=extra.get("log_every", 100),
                            align=align, lora=lora, vision_warmup=vision,
                            task_augment=_task_augment(extra.get("task_augment") or {}))


def device_named(cfg: DictConfig) -> torch.device:
    """`device` as a torch device, whether or not this machine has it (a malformed name is a one-line error)."""
    value = cfg.get("device", "cpu")
    try:
        return torch.device(str(value))
    except (RuntimeError, ValueError):
        raise ConfigError(f"config device: expected a torch device such as cpu or cuda, got {value!r}") from None


def configured_device(cfg: DictConfig) -> torch.device:
    """`device`, checked before any work: a torch device this machine has."""
    value = cfg.get("device", "cpu")
    device = device_named(cfg)
    backend = getattr(torch, device.type, None)
    available = device.type == "cpu" or (backend is not None and backend.is_available() and (
        device.index is None or device.index < getattr(backend, "device_count", lambda: 1)()))
    if not available:
        raise ConfigError(f"config device: {value!r} is not available on this machine (torch {torch.__version__})")
    return device


def cache_dir(cfg: DictConfig) -> Path:
    return Path(os.path.expanduser(str(cfg.paths.cache_dir)))
