"""Named run configs for real models (`conf/model/<name>.yaml` with a `family` key) and loading from them.

A run config says which checkpoint to load and how (hub id or directory, dtype, device_map, batch size,
accelerate launcher config). The family key must match the checkpoint's `model_type`, so a config can
never silently run one architecture's checkpoint through another's adapter.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from omegaconf import OmegaConf

from mmunlearn.errors import ConfigError, MMUnlearnError


@dataclass(frozen=True)
class ModelRunConfig:
    name: str
    family: str
    path: str
    dtype: str = "bfloat16"
    device_map: Any = None
    trust_remote_code: bool = False
    batch_size: int = 8
    accelerate_config: str | None = None


def _model_dir() -> Any:
    return resources.files("mmunlearn.conf").joinpath("model")


def _read(name: str) -> dict[str, Any] | None:
    entry = _model_dir().joinpath(f"{name}.yaml")
    if not entry.is_file():
        return None
    node = OmegaConf.to_container(OmegaConf.create(entry.read_text(encoding="utf-8")), resolve=False)
    return node if isinstance(node, dict) and "family" in node else None


def available_run_configs() -> list[str]:
    """Names of the packaged real-model run configs (the tiny model's config is not one)."""
    names = [e.name[:-5] for e in _model_dir().iterdir() if e.name.endswith(".yaml")]
    return sorted(n for n in names if _read(n) is not None)


def run_config(name: str) -> ModelRunConfig:
    """The packaged run config `name`; a one-line error with a suggestion if there is none."""
    node = _read(name)
    if node is None:
        known = available_run_configs()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"no model run config {name!r}; known: {', '.join(known)}{hint}")
    fields = {f.name for f in dataclasses.fields(ModelRunConfig)} - {"name"}
    unknown = sorted(set(node) - fields)
    if unknown:
        raise ConfigError(f"model run config {name!r}: unknown key(s) {unknown}; known: {sorted(fields)}")
    return ModelRunConfig(name=name, **node)


def load_from_run_config(config: str | ModelRunConfig, **overrides: Any) -> Any:
    """Load the adapter a run config names; `overrides` replace its fields (e.g. path=a local copy)."""
    from mmunlearn.models.adapters.base import load_adapter, load_config

    cfg = run_config(config) if isinstance(config, str) else config
    cfg = dataclasses.replace(cfg, **overrides)
    model_type = getattr(load_config(cfg.path, trust_remote_code=cfg.trust_remote_code), "model_type", None)
    if model_type != cfg.family:
        raise MMUnlearnError(f"model run config {cfg.name!r} says family {cfg.family!r} but {cfg.path!r} is "
                             f"model_type {model_type!r}")
    return load_adapter(cfg.path, dtype=cfg.dtype, device_map=cfg.device_map,
                        trust_remote_code=cfg.trust_remote_code, batch_size=cfg.batch_size)
