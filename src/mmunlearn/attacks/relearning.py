"""Relearning attack: fine-tune the edited model briefly on related facts, then ask the deleted one again.

The relearning data never contains the deleted answer: it is the fact's neighbourhood (other questions
about the same image, the same question about neighbour images) with their own answers. If a few steps on
that data bring the deleted answer back, the edit hid the fact rather than removing it. The attacker trains
full weights of chosen modules (default: every MLP down-projection of the language model) as a change of
its own that is dropped afterwards, so the defense's own parameters and later facts are unaffected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from mmunlearn.config_checks import at_least
from mmunlearn.data.records import FactRecord
from mmunlearn.defenses.editor import EditConfig, forward_terms, target_module_names, training_only
from mmunlearn.defenses.slots import SlotFullDelta, SlotRouter, unwrap_modules, wrap_modules
from mmunlearn.errors import ConfigError
from mmunlearn.metrics.accuracy import contains_answer
from mmunlearn.models.adapters.base import VLMAdapter, VLMInput

if TYPE_CHECKING:
    from mmunlearn.data.records import Benchmark

NAME = "relearning"


@dataclass(frozen=True)
class RelearnConfig:
    steps: int = field(default=5, metadata=at_least(1))
    lr: float = field(default=1e-3, metadata=at_least(0, strict=True))
    modules: tuple[str, ...] = ("down",)
    layers: str | int | tuple[int, ...] = "all"
    # Facts relearned at once hold one full weight change each (plus its gradient and AdamW moments): the
    # facts of a group are taken in chunks of at most this many parameters in all.
    max_slot_params: int = field(default=100_000_000, metadata=at_least(1))


def relearn_rows(benchmark: Benchmark, record: FactRecord) -> list[VLMInput]:
    """The fact's neighbourhood as training rows; the deleted answer appears in none of them."""
    rows = [VLMInput(benchmark.image(record.image), nq.question, nq.answer) for nq in record.neighbour_questions]
    rows += [VLMInput(benchmark.image(ni.image), record.question, ni.answer)
             for ni in record.neighbour_images.values() if ni.answer not in record.accepted_answers]
    return rows


def _skipped() -> dict[str, Any]:
    return {"attack": NAME, "kind": "whitebox", "success": False, "budget": 1,
            "scores": {}, "candidates": [], "details": {"skipped": "no neighbourhood to relearn on"}}


class Relearning:
    """Runs after the registered attacks of a (fact, defense) model state.

    Several facts relearn at once, each on its own full weight change of the target modules (`SlotFullDelta`,
    one slot per fact), routed row by row through `router`: the router of a group's batched edits, so fact
    i's rows see its defense's delta and its own relearning together. Each fact's result equals relearning
    it alone (the same AdamW updates of the same weights), and the weights are untouched afterwards.
    """

    def __init__(self, adapter: VLMAdapter, config: RelearnConfig, seed: int = 0,
                 max_new_tokens: int = 8, router: SlotRouter | None = None) -> None:
        if config.steps < 1 or not config.lr > 0:
            raise ConfigError("relearning: steps must be >= 1 and lr > 0")
        self.adapter = adapter
        self.config = config
        self.max_new_tokens = max_new_tokens
        self.router = router
        self.module_names = target_module_names(adapter, EditConfig(method="full", modules=config.modules,
                                                                    layers=config.layers, seed=seed))
        self.per_fact_params = sum(adapter.model.get_submodule(n).weight.numel() for n in self.module_names)

    def attack(self, benchmark: Benchmark, record: FactRecord) -> dict[str, Any]:
        return self.attack_many(benchmark, [record])[0]

    def chunk_size(self) -> int:
        return max(1, self.config.max_slot_params // max(1, self.per_fact_params))

    def attack_many(self, benchmark: Benchmark, records: Sequence[FactRecord]) -> list[dict[str, Any]]:
        """Rows of `records[i]` go through slot i of the router (a router of one slot when none was given)."""
        router = self.router or SlotRouter(len(records))
        if len(records) > router.slots:
            raise ConfigError(f"relearning: {len(records)} facts for a router of {router.slots} slots")
        out: list[dict[str, Any] | None] = [None] * len(records)
        todo = []
        for i, record in enumerate(records):
            if relearn_rows(benchmark, record):
                todo.append(i)
            else:
                out[i] = _skipped()
        size = self.chunk_size()
        for start in range(0, len(todo), size):
            chunk = todo[start:start + size]
            for i, result in zip(chunk, self._relearn(benchmark, records, chunk, router)):
                out[i] = result
        return out  # type: ignore[return-value]

    def _relearn(self, benchmark: Benchmark, records: Sequence[FactRecord], facts: list[int],
                 router: SlotRouter) -> list[dict[str, Any]]:
        model = self.adapter.model
        slot_of = torch.full((router.slots,), -1, dtype=torch.long)
        slot_of[facts] = torch.arange(len(facts))
        inner = [model.get_submodule(n) for n in self.module_names]
        wrappers = wrap_modules(model, self.module_names, lambda m: SlotFullDelta(m, router, len(facts), slot_of))
        try:
            rows = [relearn_rows(benchmark, records[i]) for i in facts]
            owner = torch.tensor([i for i, r in zip(facts, rows) for _ in r], device=self.adapter.device)
            batch = self.adapter.format([row for r in rows for row in r], for_generation=False)
            params = [w.delta for w in wrappers]
            optimizer = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=0.0)
            losses: list[list[float]] = [[] for _ in facts]
            with training_only(model, params):
                for _ in range(self.config.steps):
                    router.set(owner)
                    try:
                        nll = -forward_terms(self.adapter, batch, None).target_logprob
                    finally:
                        router.set(None)
                    per_fact = [nll[owner == i].mean() for i in facts]
                    for k, loss in enumerate(per_fact):
                        losses[k].append(float(loss.detach()))
                    optimizer.zero_grad(set_to_none=True)
                    torch.stack(per_fact).sum().backward()
                    optimizer.step()
            probes = [VLMInput(benchmark.image(records[i].image), records[i].question) for i in facts]
            with router.routed(self.adapter, facts):
                answers = self.adapter.generate(probes, max_new_tokens=self.max_new_tokens)
        finally:
            unwrap_modules(model, self.module_names, inner)
        return [{"attack": NAME, "kind": "whitebox", "success": contains_answer(answer, records[i].accepted_answers),
                 "budget": 1, "scores": {}, "candidates": [answer],
                 "details": {"params": dataclasses.asdict(self.config), "n_rows": len(r), "losses": ls}}
                for i, answer, r, ls in zip(facts, answers, rows, losses)]
