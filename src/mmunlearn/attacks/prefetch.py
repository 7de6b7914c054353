"""Compute what many attacks on many facts will read, in one merged model call per kind of readout.

Each attack on each fact would otherwise make its own small calls: one forward for the logit lens, one
for the probe's training states, one `generate` per blackbox attack. On a small model the per-call cost
dominates, so the caller declares the contexts (one per fact), and this module batches the targets'
forward passes, the missing probe states and every sample across all of them; the attacks then run on
the filled caches. With a `route`, item k of a merged call is taken through its own fact's model variant
(e.g. `BatchedEditor.routed`: one edit delta per fact).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mmunlearn.attacks.context import AttackContext, Needs, Route, SampleRequest, fetch_samples, routing
from mmunlearn.attacks.registry import Attack
from mmunlearn.data.records import FactRecord
from mmunlearn.models.adapters.base import LayerInput, MlpDownStore, VLMInput


@dataclass(frozen=True)
class AboveDown:
    """Records' stored inputs above an edited down-projection: row `row_of[record id]` of `store`."""

    store: MlpDownStore
    row_of: Mapping[str, int]


def merged_needs(attacks: Iterable[Attack], ctx: AttackContext) -> tuple[bool, list[int], list[SampleRequest]]:
    """Whether any attack reads the target's forward pass, the probe sizes asked, and every sample."""
    needs: list[Needs] = [a.needs(ctx) for a in attacks]
    sizes = sorted({n.probe_records for n in needs if n.probe_records})
    return any(n.forward for n in needs), sizes, [r for n in needs for r in n.samples]


def prefetch(contexts: Sequence[AttackContext], attacks: Sequence[Attack], route: Route | None = None,
             layer_inputs: Mapping[str, LayerInput] | AboveDown | None = None) -> None:
    """Fill every context's caches for `attacks`; with `route`, context i's rows go through owner i.

    `layer_inputs` (record id -> `LayerInput` from a model that equals every routed variant below its layer,
    or `AboveDown`: stored rows from a model that differs from them only in one down-projection): the probe's
    training states of those records resume there instead of running the whole model.
    """
    if not contexts:
        return
    adapter = contexts[0].adapter
    plans = [merged_needs(attacks, ctx) for ctx in contexts]

    forward = [i for i, (wants, _, _) in enumerate(plans) if wants and not contexts[i].has_forward]
    if forward:
        with routing(route, forward):
            hidden, lens = adapter.hidden_and_lens([contexts[i].item() for i in forward])
        for k, i in enumerate(forward):
            contexts[i].set_forward(hidden[k], lens[k])

    wanted: list[tuple[int, FactRecord]] = []
    seen: set[tuple[int, str]] = set()
    for i, (_, sizes, _) in enumerate(plans):
        for n in sizes:
            for record in contexts[i].missing_states(n):
                key = (i, record.id)
                if key not in seen:
                    seen.add(key)
                    wanted.append((i, record))
    if wanted:
        items = [VLMInput(contexts[i].image(r.image), r.question) for i, r in wanted]
        with routing(route, [i for i, _ in wanted]):
            if isinstance(layer_inputs, AboveDown) and all(r.id in layer_inputs.row_of for _, r in wanted):
                rows = layer_inputs.store.rows([layer_inputs.row_of[r.id] for _, r in wanted])
                states = adapter.hidden_states(items, resume=rows)
            elif isinstance(layer_inputs, Mapping) and all(r.id in layer_inputs for _, r in wanted):
                states = adapter.hidden_states(items, resume=[layer_inputs[r.id] for _, r in wanted])
            else:
                states = adapter.hidden_states(items)
        for k, (i, record) in enumerate(wanted):
            contexts[i].add_states([record], states[k:k + 1])

    fetch_samples(contexts, [requests for _, _, requests in plans], route)
