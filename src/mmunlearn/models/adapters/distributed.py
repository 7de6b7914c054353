"""Multi-process evaluation: shard items over processes, gather per-item results back in input order.

Works under `accelerate launch` or `torchrun` (GPUs with NCCL, CPUs with gloo) and degrades to a plain call
in a single process. Each process holds its own model copy (DDP-style data parallelism, `device_map` =
`local_device_map()`); for models too large for one device, shard them with the FSDP/DeepSpeed configs
in `configs/accelerate/` instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from mmunlearn.errors import MMUnlearnError

T = TypeVar("T")
R = TypeVar("R")


def process_state() -> Any:
    """accelerate's `PartialState`, on CPU (gloo) when no GPU is visible or `ACCELERATE_USE_CPU` is set."""
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=cpu)


def local_device_map(state: Any | None = None) -> dict[str, Any] | None:
    """`device_map` that puts this process's model copy on its own device (None on CPU)."""
    state = state or process_state()
    device = torch.device(state.device)
    return None if device.type == "cpu" else {"": device}


def evaluate_sharded(fn: Callable[[list[T]], Sequence[R]], items: Sequence[T], state: Any | None = None) -> list[R]:
    """Run `fn` on this process's contiguous shard of `items`; every process gets all results, in order.

    `fn` maps a list of items to one result per item (e.g. `adapter.answer_logprobs`); results must be
    picklable (move tensors to CPU). Shards are padded by repeating the last item so every process takes
    part in the gather; the padding's results are dropped by index.
    """
    from accelerate.utils import gather_object

    items = list(items)
    state = state or process_state()
    if state.num_processes == 1 or not items:
        results = list(fn(items)) if items else []
        _check(len(results), len(items))
        return results
    indexed = list(enumerate(items))
    with state.split_between_processes(indexed, apply_padding=True) as shard:
        shard = list(shard)
        local = list(fn([item for _, item in shard]))
        _check(len(local), len(shard))
        pairs = [(index, result) for (index, _), result in zip(shard, local)]
    by_index: dict[int, R] = {}
    for index, result in gather_object(pairs):
        by_index.setdefault(index, result)
    missing = [i for i in range(len(items)) if i not in by_index]
    if missing:
        raise MMUnlearnError(f"sharded evaluation lost items {missing[:5]} across {state.num_processes} processes")
    return [by_index[i] for i in range(len(items))]


def _check(got: int, expected: int) -> None:
    if got != expected:
        raise MMUnlearnError(f"sharded evaluation: fn returned {got} results for {expected} items")
