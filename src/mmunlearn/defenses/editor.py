"""The one editing loop: per-fact edit -> (caller evaluates and attacks) -> exact restore.

Parameters are either a LoRA (peft) on chosen modules of chosen decoder layers (default, like UnLOK-VQA:
rank 1 on one mid-depth MLP down-projection) or the full weights of those modules. The LoRA stays unmerged,
so restoring is resetting its weights to their seeded initialisation (B = 0: the model is the original one,
bit for bit); full weights are copied back from a snapshot. `verify_restore` checks both by comparing the
edited modules' base weights with a fingerprint taken before the first edit.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mmunlearn.config_checks import at_least
from mmunlearn.defenses.losses import Defense, EditTerms
from mmunlearn.errors import ConfigError, MMUnlearnError
from mmunlearn.models.adapters.base import VLMAdapter, VLMBatch, VLMInput
from mmunlearn.models.layer_spec import resolve_layers

MODULE_KINDS = ("q", "k", "v", "o", "down")


@dataclass(frozen=True)
class EditConfig:
    """How to edit: which parameters, how long, how hard."""

    method: str = "lora"  # lora | full
    modules: tuple[str, ...] = ("down",)
    layers: str | int | tuple[int, ...] = "unlok_edit"
    rank: int = field(default=1, metadata=at_least(1))
    alpha: float = field(default=1.0, metadata=at_least(0, strict=True))
    dropout: float = field(default=0.0, metadata=at_least(0, high=0.99))
    lr: float = field(default=9e-3, metadata=at_least(0, strict=True))
    steps: int = field(default=10, metadata=at_least(1))
    seed: int = 0
    verify_restore: bool = True
    # Each step runs from the lowest edited layer up: the layers below (and the vision tower, where the image
    # enters only through the residual stream) run once per edit, since the edit does not change them.
    from_edited_layer: bool = True

    def __post_init__(self) -> None:
        if self.method not in ("lora", "full"):
            raise ConfigError(f"edit.method: {self.method!r} is not one of lora, full")
        bad = [m for m in self.modules if m not in MODULE_KINDS]
        if not self.modules:
            raise ConfigError(f"edit.modules: name at least one of {', '.join(MODULE_KINDS)}")
        if bad:
            raise ConfigError(f"edit.modules: unknown kind(s) {bad}; known: {', '.join(MODULE_KINDS)}")
        for name in ("rank", "steps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"edit.{name} must be >= 1")
        if not self.lr > 0:
            raise ConfigError("edit.lr must be > 0")


@dataclass
class EditExamples:
    """The examples of one edit: forget rows (target already chosen by the defense) and retain rows."""

    forget: list[VLMInput]
    retain: list[VLMInput] = field(default_factory=list)


@dataclass
class EditLog:
    losses: list[float]
    seconds: float


def target_module_names(adapter: VLMAdapter, config: EditConfig) -> list[str]:
    names = adapter.module_names()
    layers = resolve_layers(config.layers if not isinstance(config.layers, list) else tuple(config.layers),
                            len(names.layers), what="edit.layers")
    out = []
    for layer in layers:
        for kind in config.modules:
            path = names.mlp_down[layer] if kind == "down" else names.attention[layer].get(kind)
            if path is None:
                raise ConfigError(f"edit.modules: layer {layer} of {adapter.name!r} has no {kind!r} projection")
            out.append(path)
    return out


def lowest_layer(adapter: VLMAdapter, module_names: Sequence[str]) -> int | None:
    """The lowest decoder layer among `module_names` (None if one lies outside the decoder layers): below it
    an edit of those modules leaves the model as it was."""
    layers = [adapter.layer_of(name) for name in module_names]
    return None if not layers or None in layers else min(layers)  # type: ignore[type-var]


def run_from(adapter: VLMAdapter, batch: VLMBatch, config: EditConfig, module_names: Sequence[str],
             lens_layers: Sequence[int] | None) -> VLMBatch:
    """`batch`, to be run from the lowest edited layer up when the config asks for it and no logit-lens layer
    the loss reads lies below it (those hidden states come from the skipped layers)."""
    layer = lowest_layer(adapter, module_names) if config.from_edited_layer else None
    if layer is None or (lens_layers is not None and min(lens_layers) < layer):
        return batch
    return adapter.from_layer(batch, layer)


@contextlib.contextmanager
def _gradients_for(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """requires_grad for `params` alone; every parameter's flag comes back afterwards."""
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in flags:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


@contextlib.contextmanager
def training_only(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Train mode with gradients for `params` alone; the model's eval mode and requires_grad flags come back."""
    with _gradients_for(model, params):
        model.train()
        try:
            yield
        finally:
            model.eval()


@contextlib.contextmanager
def paused_training(model: nn.Module) -> Iterator[None]:
    """Inside `training_only`: eval mode with no parameter gradients (an evaluation between two steps), then the
    train mode and requires_grad flags as they were."""
    mode = model.training
    with _gradients_for(model, ()):
        model.eval()
        try:
            yield
        finally:
            model.train(mode)


def _fingerprint(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().clone() for t in tensors]


class Editor:
    """Owns the trainable parameters of per-fact edits on one adapter; use as a context manager."""

    def __init__(self, adapter: VLMAdapter, config: EditConfig) -> None:
        self.adapter = adapter
        self.config = config
        self.model = adapter.model
        self.module_names = target_module_names(adapter, config)
        self._injected = False
        if config.method == "lora":
            self.trainable = self._inject_lora()
        else:
            self.trainable = [self.model.get_submodule(n).weight for n in self.module_names]
        self._initial = _fingerprint(self.trainable)
        self._base = _fingerprint(self._base_weights())

    # ------------------------------------------------------------------ parameters

    def _inject_lora(self) -> list[nn.Parameter]:
        from peft import LoraConfig, inject_adapter_in_model

        cfg = self.config
        # peft matches a string target with re.fullmatch against each module's full name.
        lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
                          target_modules="|".join(re.escape(n) for n in self.module_names))
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            inject_adapter_in_model(lora, self.model)
        self._injected = True
        params = [p for n, p in self.model.named_parameters() if "lora_" in n]
        if not params:
            raise MMUnlearnError(f"LoRA found no module among {self.module_names}")
        return params

    def _base_weights(self) -> list[torch.Tensor]:
        out = []
        for name in self.module_names:
            module = self.model.get_submodule(name)
            base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
            out.append(base.weight)
        return out

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.trainable)

    # ------------------------------------------------------------------ edit and restore

    def edit(self, defense: Defense, examples: EditExamples, lens_layers: Sequence[int] | None = None,
             lr: float | None = None, steps: int | None = None) -> EditLog:
        """Train the trainable parameters on `defense`'s loss for `steps` AdamW steps (default: the config's)."""
        start = time.perf_counter()
        # Tokenisation and image processing happen once per edit, not once per step.
        lens = lens_layers if defense.needs_lens else None
        forget = run_from(self.adapter, self.adapter.format(list(examples.forget), for_generation=False),
                          self.config, self.module_names, lens)
        retain = run_from(self.adapter, self.adapter.format(list(examples.retain), for_generation=False),
                          self.config, self.module_names, None) if examples.retain and defense.retain_weight else None
        ref = None
        if defense.needs_reference:
            with torch.no_grad():
                ref = forward_terms(self.adapter, forget, None).target_logprob.detach()
        optimizer = torch.optim.AdamW(self.trainable, lr=self.config.lr if lr is None else lr, weight_decay=0.0)
        losses = []
        with training_only(self.model, self.trainable):
            for _ in range(self.config.steps if steps is None else steps):
                terms = forward_terms(self.adapter, forget, lens)
                terms.ref_logprob = ref
                if retain is not None:
                    terms.retain_nll = retain_nll(self.adapter, retain)
                loss = defense.total(terms)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
        return EditLog(losses, time.perf_counter() - start)

    def restore(self) -> None:
        """Reset the trainable parameters exactly; check the base weights are untouched (if asked)."""
        with torch.no_grad():
            for p, saved in zip(self.trainable, self._initial):
                p.copy_(saved)
        if self.config.verify_restore:
            self.verify()

    def verify(self) -> None:
        for name, w, saved in zip(self.module_names, self._base_weights(), self._base):
            if self.config.method == "lora" and not torch.equal(w, saved):
                raise MMUnlearnError(f"restore check failed: base weight of {name} changed during a LoRA edit")
        for p, saved in zip(self.trainable, self._initial):
            if not torch.equal(p, saved):
                raise MMUnlearnError("restore check failed: edited parameters differ from their snapshot")

    @contextlib.contextmanager
    def edited(self, defense: Defense, examples: EditExamples, lens_layers: Sequence[int] | None = None,
               lr: float | None = None, steps: int | None = None) -> Iterator[EditLog]:
        log = self.edit(defense, examples, lens_layers, lr=lr, steps=steps)
        try:
            yield log
        finally:
            self.restore()

    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's weights as edited now, under the names of the model without LoRA: each LoRA's delta
        (peft's own `get_delta_weight`) added to its base weight; every other tensor is the model's own."""
        state = {name.replace(".base_layer.", "."): tensor for name, tensor in self.model.state_dict().items()
                 if "lora_" not in name}
        if self._injected:
            for name in self.module_names:
                module = self.model.get_submodule(name)
                key = f"{name}.weight"
                delta = sum(module.get_delta_weight(adapter) for adapter in module.active_adapters)
                state[key] = state[key] + delta.to(state[key].dtype)
        return state

    def save_merged(self, directory: Path) -> None:
        """Write the model as edited now, the edit merged into its weights, with its processor (or tokenizer and
        image processor): a checkpoint that loads like the original (`AutoModelForImageTextToText`,
        `AutoProcessor`), in safetensors, written whole or not at all."""
        from mmunlearn.runner.manifest import atomic_dir

        with atomic_dir(directory) as tmp:
            self.model.save_pretrained(tmp, state_dict=self.merged_state_dict())
            parts = [self.adapter.processor] if self.adapter.processor is not None else \
                [self.adapter.tokenizer, self.adapter.image_processor]
            for part in parts:
                part.save_pretrained(tmp)

    def close(self) -> None:
        """Remove the LoRA modules: the model is the one the editor was given."""
        if self._injected:
            for name in self.module_names:
                parent_name, child = name.rsplit(".", 1)
                module = self.model.get_submodule(name)
                if hasattr(module, "get_base_layer"):
                    setattr(self.model.get_submodule(parent_name), child, module.get_base_layer())
            self._injected = False

    def __enter__(self) -> Editor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- forward terms


def forward_terms(adapter: VLMAdapter, items: Sequence[VLMInput] | VLMBatch,
                  lens_layers: Sequence[int] | None) -> EditTerms:
    """One forward pass: summed target log-probs (end-of-turn excluded) and, if asked, logit-lens probs.

    The logit lens is read at the last prompt position (the one predicting the first target token), for the
    hidden-state indices `lens_layers`, with gradients, as log-probabilities.
    """
    batch = items if isinstance(items, VLMBatch) else adapter.format(list(items), for_generation=False)
    kept, offset = adapter.answer_logits(batch)
    with adapter.reading_last(kept.get("logits_to_keep", batch.inputs["input_ids"].shape[1])):
        out = adapter.forward_batch(batch, output_hidden_states=lens_layers is not None, **kept)
    ids = batch.inputs["input_ids"]
    stops = set(adapter.stop_token_ids)
    # Every answer token at once: one gather from the logits (slicing them row by row made the backward pass
    # add a zero-filled gradient of the whole logits tensor per row).
    rows, places, positions = [], [], []
    id_rows = ids.tolist()
    for b, (start, end) in enumerate(batch.answer_spans):
        n = end - start
        if n > 1 and id_rows[b][end - 1] in stops:
            n -= 1
        rows += [b] * n
        places += range(n)
        positions += range(start - 1, start - 1 + n)
    device = ids.device
    row_t = torch.tensor(rows, device=device)
    place_t = torch.tensor(places, device=device)
    pos_t = torch.tensor(positions, device=device)
    logits = out.logits[row_t.to(out.logits.device), (pos_t - offset).to(out.logits.device)]
    token_lp = logits.float().log_softmax(-1).gather(-1, ids[row_t, pos_t + 1][:, None].to(logits.device))[:, 0]
    table = token_lp.new_zeros(len(batch.answer_spans), max(places) + 1)
    summed = table.index_put((row_t.to(table.device), place_t.to(table.device)), token_lp).sum(-1)
    first = ids[torch.arange(len(batch.answer_spans), device=device),
                torch.tensor([s for s, _ in batch.answer_spans], device=device)]
    terms = EditTerms(summed, first)
    if lens_layers is not None:
        states = adapter._complete_hidden_states(list(out.hidden_states))
        rows = torch.arange(len(batch.answer_spans))
        pos = torch.tensor([s - 1 for s, _ in batch.answer_spans])
        picked = torch.stack([states[layer][rows, pos] for layer in lens_layers], dim=1)
        terms.lens_logprobs = adapter.lens_logprobs(picked, lens_layers)
    return terms


def retain_nll(adapter: VLMAdapter, items: Sequence[VLMInput] | VLMBatch) -> torch.Tensor:
    """Mean per-token NLL of the retain rows' answers (end-of-turn included): the usual retain term."""
    batch = items if isinstance(items, VLMBatch) else adapter.format(list(items), for_generation=False)
    return adapter.forward_batch(batch, with_labels=True).loss
