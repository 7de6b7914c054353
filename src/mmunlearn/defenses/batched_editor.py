"""Independent edits of many facts in one forward/backward: a low-rank delta per fact, chosen per batch row.

`SlotLowRank` (defenses.slots) wraps a target linear layer with S independent rank-r deltas (A: [S, r, in],
B: [S, out, r], scale alpha / r, B = 0 at the start, like a LoRA). Each batch row names its slot (or -1: no
delta) through the editor's `SlotRouter`, so the rows of N facts go through the model together while fact
i's rows see only delta i. The facts' losses are
summed, so delta i gets exactly the gradient of fact i's own loss, and AdamW (elementwise) updates it as it
would in a sequential edit: each fact's result equals its sequential edit up to floating-point
differences from batching. `with editor.slot(i):` then makes every later forward use delta i, so the same
measurement and attack code evaluates fact i.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import torch
from torch import nn

from mmunlearn.defenses.editor import (
    EditConfig,
    EditExamples,
    EditLog,
    Editor,
    forward_terms,
    retain_nll,
    run_from,
    target_module_names,
    training_only,
)
from mmunlearn.defenses.losses import Defense, EditTerms
from mmunlearn.defenses.slots import SlotLowRank, SlotRouter, unwrap_modules, wrap_modules
from mmunlearn.errors import ConfigError
from mmunlearn.models.adapters.base import VLMAdapter, VLMBatch


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
        if init is None:
            with Editor(adapter, config) as sequential:
                init = lora_init(sequential)
        self.router = SlotRouter(slots)
        for name in self.module_names:
            if not isinstance(adapter.model.get_submodule(name), nn.Linear):
                raise ConfigError(f"batched edits: {name} is not a linear layer")
        inits = iter(init)
        self.modules = wrap_modules(adapter.model, self.module_names,
                                    lambda base: SlotLowRank(base, self.router, config.rank, config.alpha,
                                                             next(inits)))
        self.trainable = [p for m in self.modules for p in (m.A, m.B)]
        self._initial = [p.detach().clone() for p in self.trainable]

    # ------------------------------------------------------------------ slot routing

    def _set_rows(self, rows: torch.Tensor | None) -> None:
        self.router.set(rows)

    def slot(self, index: int) -> contextlib.AbstractContextManager[None]:
        """Every forward inside uses fact `index`'s delta (the rows of any batch)."""
        return self.router.slot(index, self.adapter.device)

    def routed(self, owners: Sequence[int]) -> contextlib.AbstractContextManager[None]:
        """Adapter calls inside take item k through fact `owners[k]`'s delta (-1: the unedited model).

        Lets one merged measurement or attack call evaluate every fact of a group, each under its own edit.
        """
        return self.router.routed(self.adapter, owners)

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
        lens = lens_layers if defense.needs_lens else None
        forget = run_from(self.adapter, self.adapter.format(forget_rows, for_generation=False), self.config,
                          self.module_names, lens)
        use_retain = bool(defense.retain_weight) and all(ex.retain for ex in examples)
        retain = [run_from(self.adapter, self.adapter.format(list(ex.retain), for_generation=False), self.config,
                           self.module_names, None) for ex in examples] if use_retain else None
        ref = None
        if defense.needs_reference:
            with torch.no_grad():
                ref = self._terms(forget, owner, None).target_logprob.detach()
        optimizer = torch.optim.AdamW(self.trainable, lr=self.config.lr if lr is None else lr, weight_decay=0.0)
        losses: list[list[float]] = [[] for _ in examples]
        try:
            with training_only(self.adapter.model, self.trainable):
                for _ in range(self.config.steps if steps is None else steps):
                    terms = self._terms(forget, owner, lens)
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
        unwrap_modules(self.adapter.model, self.module_names, [m.base for m in self.modules])
        self.modules = []

    def __enter__(self) -> BatchedEditor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
