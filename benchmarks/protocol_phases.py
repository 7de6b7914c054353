"""Where a group's time goes in the UnLOK protocol: seconds per phase of `Protocol.run_group`, default benchmark.

Usage: python benchmarks/protocol_phases.py [--groups 3] [--out results.json] [KEY=VALUE ...]
Primes the protocol on the whole benchmark (as `mmunlearn unlok run` does), then runs `--groups` groups of
`unlok.batch_facts` facts, timing each phase by wrapping the methods that do it: measurements, edits, the
attacks' merged readouts (of which: sampling and the probe's training states), the attacks' scoring, and
relearning. Prints the median seconds per group and each phase's share.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from common import unlok_setup

import mmunlearn.experiments.unlok_protocol as protocol_module
from mmunlearn.attacks.relearning import Relearning
from mmunlearn.defenses.batched_editor import BatchedEditor
from mmunlearn.experiments.unlok import build_components, edit_overrides, protocol_config
from mmunlearn.experiments.unlok_protocol import Protocol

PHASES = ("measurements", "edits", "readouts", "  of which sampling", "  of which probe states", "attack scoring",
          "relearning")


def timed(owner: Any, name: str, phase: str, spent: dict[str, float]) -> None:
    """Replace `owner.name` with a wrapper adding its wall time to `spent[phase]`."""
    inner: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[phase] += time.perf_counter() - t0

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--out")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg, benchmark, adapter = unlok_setup(args.overrides)
    defenses, attacks, edit_config, relearn_config = build_components(cfg)
    config = protocol_config(cfg)
    size = max(1, int(cfg.unlok.batch_facts))
    spent: dict[str, float] = defaultdict(float)
    timed(Protocol, "measure_many", "measurements", spent)
    timed(BatchedEditor, "edit_many", "edits", spent)
    timed(protocol_module, "prefetch", "readouts", spent)
    timed(adapter, "sample", "  of which sampling", spent)
    timed(adapter, "hidden_states", "  of which probe states", spent)
    timed(Relearning, "attack_many", "relearning", spent)
    for attack in attacks.values():
        timed(attack, "run_many", "attack scoring", spent)
    per_group: list[dict[str, float]] = []
    with BatchedEditor(adapter, edit_config, slots=size) as editor:
        relearn = Relearning(adapter, relearn_config, seed=config.seed, max_new_tokens=config.max_new_tokens,
                             router=editor.router) if relearn_config else None
        protocol = Protocol(adapter, benchmark, None, defenses, attacks, config, relearn,
                            edit_overrides=edit_overrides(cfg, defenses),
                            edited_modules=editor.module_names)
        t0 = time.perf_counter()
        protocol.prime()
        prime = time.perf_counter() - t0
        records = benchmark.records
        for g in range(min(args.groups, len(records) // size)):
            spent.clear()
            t0 = time.perf_counter()
            protocol.run_group(records[g * size:(g + 1) * size], editor)
            per_group.append({"total": time.perf_counter() - t0, **spent})
    median = {k: statistics.median(g.get(k, 0.0) for g in per_group) for k in ("total", *PHASES)}
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}; "
          f"{len(benchmark)} facts primed in {prime:.1f} s; {len(per_group)} groups of {size}, medians")
    print("| phase | seconds per group | share |")
    print("|---|---|---|")
    for phase in PHASES:
        print(f"| {phase} | {median[phase]:.2f} | {median[phase] / median['total']:.0%} |")
    print(f"| whole group | {median['total']:.2f} | 100% |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"prime_seconds": prime, "group_size": size, "groups": per_group, "median": median}, fh,
                      indent=2)


if __name__ == "__main__":
    main()
