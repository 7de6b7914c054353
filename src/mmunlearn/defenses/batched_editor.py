"""Independent edits of many facts in one forward/backward: a low-rank delta per fact, chosen per batch row.

`SlotLowRank` wraps a target linear layer with S independent rank-r deltas (A: [S, r, in], B: [S, out, r],
scale alpha / r, B = 0 at the start, like a LoRA). Each batch row names its slot (or -1: no delta), so the
rows of N facts go through the model together while fact i's rows see only delta i. The facts' losses are
summed, so delta i gets exactly the gradient of fact i's own loss, and AdamW (elementwise) updates it as it
would in a sequential edit: each fact's result equals its sequential edit up to floating-point
differences from batching. `with editor.slot(i):` then makes every later forward use delta i, so the same
measurement and attack code evaluates fact i.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from mmunlearn.defenses.editor import (
    EditConfig,
    EditExamples,
    EditLog,
    Editor,
    forward_terms,
    retain_nll,
    target_module_names,
    training_only,
)
from mmunlearn.defenses.losses import Defense, EditTerms
from mmunlearn.errors import ConfigError, MMUnlearnError
from mmunlearn.models.adapters.base import VLMAdapter, VLMBatch


class SlotLowRank(nn.Module):
    """A linear layer plus one low-rank delta per slot, applied row by row."""

    def __init__(self, base: nn.Linear, slots: int, rank: int, alpha: float, init: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.A = nn.Parameter(init.detach().clone()[None].repeat(slots, 1, 1).to(base.weight))  # [S, r, in]
        self.B = nn.Parameter(torch.zeros(slots, base.out_features, rank).to(base.weight))    # [S, out, r]
        self.rows: torch.Tensor | None = None  # [batch] slot per row, -1 = none; None = no delta at all

    @property
    def weight(self) -> nn.Parameter:
        """The base layer's weight (full-weight editors and restore checks reach it through the wrapper)."""
        return self.base.weight

    def get_base_layer(self) -> nn.Linear:
        return self.base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.rows is None:
            return out
        rows = self.rows
        if rows.shape[0] != x.shape[0]:
            rows = rows[:1].expand(x.shape[0]) if bool((rows == rows[0]).all()) else rows
            if rows.shape[0] != x.shape[0]:
                raise MMUnlearnError(f"slot rows ({self.rows.shape[0]}) do not match the batch ({x.shape[0]})")
        active = rows >= 0
        index = rows.clamp_min(0)
        a, b = self.A[index], self.B[index]  # [batch, r, in], [batch, out, r]
        delta = torch.einsum("btr,bor->bto", torch.einsum("bti,bri->btr", x, a), b) * self.scale
        return out + delta * active[:, None, None].to(delta.dtype)


def lora_init(editor: object) -> list[torch.Tensor]:
    """The initial A matrices of a sequential `Editor`'s LoRA, in its module order."""
    model = editor.adapter.model  # type: ignore[attr-defined]
    out = []
    for name in editor.module_names:  # type: ignore[attr-defined]
        module = model.get_submodule(name)
        out.append(next(iter(module.lora_A.values())).weight.detach().clone())
    return out


class BatchedEditor:
    """Owns S slots of per-fact deltas on one adapter; `edit_many` trains them together."""

    def __init__(self, adapter: VLMAdapter, config: EditConfig, slots: int,
                 init: Sequence[torch.Tensor] | None = None) -> None:
        """`init`: the A matrix each slot starts from, per target module; default: exactly the seeded LoRA
        initialisation the sequential `Editor` uses for this config, so both edit alike."""
        if config.method != "lora":
            raise ConfigError("batched edits need edit.method=lora (one low-rank delta per fact)")
        if slots < 1:
            raise ConfigError("batched edits need at least one slot")
        self.adapter = adapter
        self.config = config
        self.slots = slots
        self.module_names = target_module_names(adapter, config)
        self.modules: list[SlotLowRank] = []
        if init is None:
            with Editor(adapter, config) as sequential:
                init = lora_init(sequential)
        for k, name in enumerate(self.module_names):
            parent_name, child = name.rsplit(".", 1)
            base = adapter.model.get_submodule(name)
            if not isinstance(base, nn.Linear):
                raise ConfigError(f"batched edits: {name} is not a linear layer")
            wrapped = SlotLowRank(base, slots, config.rank, config.alpha, init[k])
            setattr(adapter.model.get_submodule(parent_name), child, wrapped)
            self.modules.append(wrapped)
        self.trainable = [p for m in self.modules for p in (m.A, m.B)]
        self._initial = [p.detach().clone() for p in self.trainable]

    # ------------------------------------------------------------------ slot routing

    def _set_rows(self, rows: torch.Tensor | None) -> None:
        for m in self.modules:
            m.rows = rows

    @contextlib.contextmanager
    def slot(self, index: int) -> Iterator[None]:
        """Every forward inside uses fact `index`'s delta (the rows of any batch)."""
        self._set_rows(torch.tensor([index], device=self.adapter.device))
        try:
            yield
        finally:
            self._set_rows(None)

    @contextlib.contextmanager
    def routed(self, owners: Sequence[int]) -> Iterator[None]:
        """Adapter calls inside take item k through fact `owners[k]`'s delta (-1: the unedited model).

        Lets one merged measurement or attack call evaluate every fact of a group, each under its own edit.
        """
        table = torch.tensor(list(owners), dtype=torch.long)
        if len(table) and (int(table.max()) >= self.slots or int(table.min()) < -1):
            raise ConfigError(f"routed: owners must lie in -1..{self.slots - 1}")
        device = self.adapter.device

        def route(indices: list[int]) -> None:
            if indices and max(indices) >= len(table):
                raise MMUnlearnError(f"routed: a batch names item {max(indices)} of {len(table)} routed items")
            self._set_rows(table[indices].to(device))

        try:
            with self.adapter.each_batch(route):
                yield
        finally:
            self._set_rows(None)

    # ------------------------------------------------------------------ training

    def edit_many(self, defense: Defense, examples: Sequence[EditExamples],
                  lens_layers: Sequence[int] | None = None, lr: float | None = None,
                  steps: int | None = None) -> list[EditLog]:
        """Edit fact i into slot i for every i, all in one forward/backward per step."""
        if len(examples) > self.slots:
            raise ConfigError(f"{len(examples)} facts for {self.slots} slots")
        start = time.perf_counter()
        forget_rows = [r for ex in examples for r in ex.forget]
        owner = torch.tensor([i for i, ex in enumerate(examples) for _ in ex.forget])
        forget = self.adapter.format(forget_rows, for_generation=False)
        use_retain = bool(defense.retain_weight) and all(ex.retain for ex in examples)
        retain = [self.adapter.format(list(ex.retain), for_generation=False) for ex in examples] if use_retain \
            else None
        ref = None
        if defense.needs_reference:
            with torch.no_grad():
                ref = self._terms(forget, owner, None).target_logprob.detach()
        optimizer = torch.optim.AdamW(self.trainable, lr=self.config.lr if lr is None else lr, weight_decay=0.0)
        losses: list[list[float]] = [[] for _ in examples]
        try:
            with training_only(self.adapter.model, self.trainable):
                for _ in range(self.config.steps if steps is None else steps):
                    terms = self._terms(forget, owner, lens_layers if defense.needs_lens else None)
                    total = 0.0
                    for i in range(len(examples)):
                        mine = owner == i
                        sub = EditTerms(terms.target_logprob[mine], terms.target_token[mine],
                                        None if terms.lens_logprobs is None else terms.lens_logprobs[mine],
                                        None if ref is None else ref[mine])
                        if retain is not None:
                            sub.retain_nll = self._retain(retain[i], i)
                        loss = defense.total(sub)
                        losses[i].append(float(loss.detach()))
                        total = total + loss
                    optimizer.zero_grad(set_to_none=True)
                    total.backward()  # type: ignore[union-attr]
                    optimizer.step()
        finally:
            self._set_rows(None)
        seconds = (time.perf_counter() - start) / max(1, len(examples))
        return [EditLog(ls, seconds) for ls in losses]

    def _terms(self, batch: VLMBatch, owner: torch.Tensor, lens_layers: Sequence[int] | None):  # noqa: ANN202
        self._set_rows(owner.to(self.adapter.device))
        return forward_terms(self.adapter, batch, lens_layers)

    def _retain(self, batch: VLMBatch, index: int) -> torch.Tensor:
        self._set_rows(torch.full((len(batch),), index, device=self.adapter.device))
        return retain_nll(self.adapter, batch)

    def restore(self) -> None:
        """Every slot back to its initial delta (B = 0: the original model)."""
        with torch.no_grad():
            for p, saved in zip(self.trainable, self._initial):
                p.copy_(saved)

    def close(self) -> None:
        """Put the original linear layers back."""
        for name, module in zip(self.module_names, self.modules):
            parent_name, child = name.rsplit(".", 1)
            setattr(self.adapter.model.get_submodule(parent_name), child, module.base)
        self.modules = []

    def __enter__(self) -> BatchedEditor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
