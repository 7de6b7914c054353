"""`device` places the tiny model or a model given by path or hub id; a packaged run config keeps its own
`device_map`; the CPU stays the default."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from mmunlearn.config import load_config
from mmunlearn.experiments.unlok import load_model_by_name


def test_device_reaches_the_loader_and_run_configs_keep_their_own(monkeypatch):
    loaded: list[tuple[str, dict]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr("mmunlearn.models.adapters.base.load_adapter",
                        lambda path, **kw: loaded.append((str(path), kw)))
    monkeypatch.setattr("mmunlearn.models.registry.load_from_run_config",
                        lambda name, **kw: loaded.append((name, kw)))
    monkeypatch.setattr("mmunlearn.pretrain.pipeline.pretrain", lambda cfg, log: SimpleNamespace(path="cache/tiny"))
    on_gpu = load_config(["device=cuda"])
    for name in (None, "some/model", "llava-1.5-7b"):
        load_model_by_name(on_gpu, name, 4, print)
    load_model_by_name(load_config([]), None, 4, print)
    assert [(path, kw.get("device_map")) for path, kw in loaded] == [
        ("cache/tiny", {"": "cuda"}), ("some/model", {"": "cuda"}), ("llava-1.5-7b", None), ("cache/tiny", None)]
