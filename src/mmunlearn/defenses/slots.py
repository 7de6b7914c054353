"""Per-fact weight deltas chosen row by row, so one forward/backward serves many independent edits.

A `SlotRouter` holds the slot of each row of the coming forward passes; every slot module of a group reads
the same router, so the edit of a defense (`SlotLowRank`) and the relearning attacker's full-weight change
on top of it (`SlotFullDelta`) follow one routing. Slot -1 (or no routing at all) means no delta.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from mmunlearn.errors import ConfigError, MMUnlearnError


class SlotRouter:
    """The slot of each batch row for the forward passes to come (None: no slot deltas at all)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.rows: torch.Tensor | None = None

    def set(self, rows: torch.Tensor | None) -> None:
        self.rows = rows

    def rows_for(self, batch: int) -> torch.Tensor | None:
        """Rows matching a batch of `batch` (one slot for the whole batch broadcasts)."""
        rows = self.rows
        if rows is None or rows.shape[0] == batch:
            return rows
        if bool((rows == rows[0]).all()):
            return rows[:1].expand(batch)
        raise MMUnlearnError(f"slot rows ({rows.shape[0]}) do not match the batch ({batch})")

    @contextlib.contextmanager
    def slot(self, index: int, device: torch.device) -> Iterator[None]:
        """Every forward inside goes through slot `index`."""
        self.set(torch.tensor([index], device=device))
        try:
            yield
        finally:
            self.set(None)

    @contextlib.contextmanager
    def routed(self, adapter: object, owners: Sequence[int]) -> Iterator[None]:
        """Adapter calls inside take item k through slot `owners[k]` (-1: none), whatever their batching."""
        table = torch.tensor(list(owners), dtype=torch.long)
        if len(table) and (int(table.max()) >= self.slots or int(table.min()) < -1):
            raise ConfigError(f"routed: owners must lie in -1..{self.slots - 1}")
        device = adapter.device  # type: ignore[attr-defined]

        def route(indices: list[int]) -> None:
            if indices and max(indices) >= len(table):
                raise MMUnlearnError(f"routed: a batch names item {max(indices)} of {len(table)} routed items")
            self.set(table[indices].to(device))

        try:
            with adapter.each_batch(route):  # type: ignore[attr-defined]
                yield
        finally:
            self.set(None)


def _active(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return (rows >= 0)[:, None, None].to(like.dtype)


class SlotLowRank(nn.Module):
    """A linear layer plus one low-rank delta per slot (A: [S, r, in], B: [S, out, r], B = 0 at the start)."""

    def __init__(self, base: nn.Linear, router: SlotRouter, rank: int, alpha: float, init: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.router = router
        self.scale = alpha / rank
        slots = router.slots
        self.A = nn.Parameter(init.detach().clone()[None].repeat(slots, 1, 1).to(base.weight))  # [S, r, in]
        self.B = nn.Parameter(torch.zeros(slots, base.out_features, rank).to(base.weight))    # [S, out, r]

    @property
    def weight(self) -> nn.Parameter:
        """The base layer's weight (full-weight editors and restore checks reach it through the wrapper)."""
        return self.base.weight

    def get_base_layer(self) -> nn.Linear:
        return self.base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        rows = self.router.rows_for(x.shape[0])
        if rows is None:
            return out
        index = rows.clamp_min(0)
        a, b = self.A[index], self.B[index]  # [batch, r, in], [batch, out, r]
        delta = torch.einsum("btr,bor->bto", torch.einsum("bti,bri->btr", x, a), b) * self.scale
        return out + delta * _active(rows, delta)


class SlotFullDelta(nn.Module):
    """Any linear-acting module plus one full weight change per fact ([n, out, in], zero at the start).

    `slot_of[s]` is the change router slot s uses (-1: none), so a group of S routed facts can relearn in
    chunks of n < S when S full changes do not fit. Training a change from zero with AdamW (no weight
    decay) is training the weight itself: the same gradients and updates, so each fact's result equals a
    full-weight edit of that fact alone.
    """

    def __init__(self, inner: nn.Module, router: SlotRouter, n: int, slot_of: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.router = router
        weight = inner.weight
        self.delta = nn.Parameter(torch.zeros(n, *weight.shape, dtype=weight.dtype, device=weight.device))
        self.slot_of = slot_of.to(weight.device)

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        rows = self.router.rows_for(x.shape[0])
        if rows is None:
            return out
        index = torch.where(rows >= 0, self.slot_of[rows.clamp_min(0)], -1)
        active = (index >= 0).nonzero(as_tuple=True)[0]
        if active.numel() == 0:
            return out
        # Each change's rows are packed into its own block of a zero-padded [n * most rows, ...] tensor, so
        # one batched matmul applies every change to its rows (a [batch, out, in] weight gathered per row
        # would copy, and in the backward pass scatter, a full matrix per row). Only index_select /
        # index_copy / index_add move rows: their backward passes are the same cheap ops, where advanced
        # indexing would accumulate gradients through the slow index_put path.
        owner = index[active]
        counts = torch.bincount(owner, minlength=self.delta.shape[0])
        starts = torch.cumsum(counts, 0) - counts
        order = torch.argsort(owner, stable=True)
        place = torch.empty_like(order)
        place[order] = torch.arange(len(order), device=order.device)
        block = int(counts.max())
        where = owner * block + place - starts[owner]  # each active row's place in its change's block
        n = self.delta.shape[0]
        packed = x.new_zeros(n * block, *x.shape[1:]).index_copy(0, where, x.index_select(0, active))
        changed = packed.view(n, -1, x.shape[-1]) @ self.delta.transpose(1, 2)  # [n, rows * positions, out]
        changed = changed.view(n * block, *x.shape[1:-1], -1)
        return out.index_add(0, active, changed.index_select(0, where))


def wrap_modules(model: nn.Module, names: Sequence[str], make: type[nn.Module] | object) -> list[nn.Module]:
    """Replace each named submodule by `make(module)`; returns the wrappers in order."""
    out = []
    for name in names:
        parent_name, child = name.rsplit(".", 1)
        wrapped = make(model.get_submodule(name))  # type: ignore[operator]
        setattr(model.get_submodule(parent_name), child, wrapped)
        out.append(wrapped)
    return out


def unwrap_modules(model: nn.Module, names: Sequence[str], inner: Sequence[nn.Module]) -> None:
    """Put the original submodules back (in reverse order of wrapping if they nest)."""
    for name, module in zip(names, inner):
        parent_name, child = name.rsplit(".", 1)
        setattr(model.get_submodule(parent_name), child, module)
