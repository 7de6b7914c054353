"""Session fixtures: each tiny family model is built and saved once, then loaded through `load_adapter`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from vlm_fixtures import BUILDERS

from mmunlearn.models.adapters import VLMAdapter, load_adapter


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = BUILDERS[family](tmp_path_factory.mktemp(family))
        return built[family]

    return get


@pytest.fixture(scope="session")
def adapter_for(model_dir: Callable[[str], Path]) -> Callable[[str], VLMAdapter]:
    loaded: dict[str, VLMAdapter] = {}

    def get(family: str) -> VLMAdapter:
        if family not in loaded:
            loaded[family] = load_adapter(model_dir(family))
        return loaded[family]

    return get
