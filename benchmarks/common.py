"""What the UnLOK benchmark scripts share: the config from command-line overrides, the benchmark and the model."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from mmunlearn.config import load_config
from mmunlearn.data.records import Benchmark
from mmunlearn.experiments.unlok import load_benchmark, load_model


def unlok_setup(overrides: list[str]) -> tuple[DictConfig, Benchmark, Any]:
    """Config (torch threads set from it), the default benchmark and the model adapter, as `unlok run` loads them."""
    cfg = load_config(overrides)
    torch.set_num_threads(int(cfg.threads))
    return cfg, load_benchmark(cfg), load_model(cfg, print)
