"""The whole whitebox suite (hp, pd, pd2 from one forward pass) vs one plain forward pass, side by side.

Usage: python benchmarks/whitebox_suite.py [--facts 64] [--repeats 5] [--group 16] [--out results.json]
[KEY=VALUE ...]
For each fact of the default benchmark: time one plain forward of (image, question) through the model
(batch building included, as for the attacks), and
the logit-lens attacks run from a fresh `AttackContext` (one forward with hidden states, the logit lens of
every layer, the candidate sets of hp, pd and pd2). Prints the medians over facts and their ratio (target
<= 1.3x). The probe attack is reported apart: it also needs the other facts' hidden states.
Then the same for groups of `--group` facts, as the protocol runs them: one plain batched forward of the
group vs the four whitebox attacks of every fact of the group, their readouts prefetched in one call and
each attack scoring the whole group at once (`Attack.run_many`), as the protocol runs them.
Last, what the probe costs after an edit: the other facts' states under each fact of a group's own edit
(random per-fact deltas on the edited module), through the whole model vs resumed at the edited layer from
the unedited model's stored inputs (`hidden_states(..., resume=...)`), with their largest difference.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from common import SHAPES, clock, machine, unlok_setup

from mmunlearn.attacks.context import AttackContext
from mmunlearn.attacks.prefetch import prefetch
from mmunlearn.attacks.registry import get_attack
from mmunlearn.defenses.batched_editor import BatchedEditor
from mmunlearn.defenses.editor import lowest_layer
from mmunlearn.experiments.unlok import build_components
from mmunlearn.models.adapters.base import VLMInput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--shape", choices=sorted(SHAPES),
                        help="time a randomly initialised model of this shape (on the config's device)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="of the --shape model")
    parser.add_argument("--out")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg, benchmark, adapter = unlok_setup(args.overrides, args.shape, args.dtype)
    attacks = [get_attack(n, k=4) for n in ("hp", "pd", "pd2")]
    probe = get_attack("probe", k=4, n_train=256)
    plain, suite, probe_times = [], [], []
    cache: dict = {}
    for record in benchmark.records[:args.facts]:
        item = VLMInput(benchmark.image(record.image), record.question)
        for _ in range(args.repeats):
            t0 = clock(adapter)  # both sides start from the VLMInput (row encodings cached alike)
            with torch.no_grad():
                adapter.model(**adapter.format([item], for_generation=True).model_inputs())
            plain.append(clock(adapter) - t0)
            t0 = clock(adapter)
            ctx = AttackContext(adapter, benchmark, record, seed=0, state_cache=cache)
            for attack in attacks:
                attack.run(ctx)
            suite.append(clock(adapter) - t0)
            t0 = clock(adapter)
            probe.run(ctx)
            probe_times.append(clock(adapter) - t0)
    group_plain, group_lens, group_suite = [], [], []
    records = benchmark.records[:args.facts]
    for start in range(0, len(records) - args.group + 1, args.group):
        chunk = records[start:start + args.group]
        items = [VLMInput(benchmark.image(r.image), r.question) for r in chunk]
        for _ in range(args.repeats):
            t0 = clock(adapter)
            with torch.no_grad():
                adapter.model(**adapter.format(items, for_generation=True).model_inputs())
            group_plain.append(clock(adapter) - t0)
            for chosen, times in ((attacks, group_lens), ([*attacks, probe], group_suite)):
                t0 = clock(adapter)
                contexts = [AttackContext(adapter, benchmark, r, seed=0, state_cache=cache) for r in chunk]
                prefetch(contexts, chosen)
                for attack in chosen:
                    attack.run_many(contexts)
                times.append(clock(adapter) - t0)
    whole, resumed, above, gap, gap_above = probe_states_after_edit(cfg, adapter, benchmark, args.group,
                                                                    args.repeats)
    p, s, q = statistics.median(plain), statistics.median(suite), statistics.median(probe_times)
    gp, gl, gs = (statistics.median(t) for t in (group_plain, group_lens, group_suite)) if group_plain \
        else (0.0, 0.0, 0.0)
    print(f"\nmachine: {machine(adapter)}; "
          f"{min(args.facts, len(benchmark))} facts x {args.repeats} repeats, medians")
    print("| measure | median ms | ratio to one plain forward |")
    print("|---|---|---|")
    print(f"| one plain forward | {p * 1e3:.2f} | 1.00x |")
    print(f"| whitebox suite hp + pd + pd2 (one pass) | {s * 1e3:.2f} | {s / p:.2f}x |")
    print(f"| probe attack (states of other facts cached per model state) | {q * 1e3:.2f} | {q / p:.2f}x |")
    if group_plain:
        print(f"| one plain forward of {args.group} facts | {gp * 1e3:.2f} | 1.00x (of this row) |")
        print(f"| hp + pd + pd2 of {args.group} facts (one forward) | {gl * 1e3:.2f} | "
              f"{gl / gp:.2f}x the group's forward |")
        print(f"| hp + pd + pd2 + probe of {args.group} facts (readouts in one call) | {gs * 1e3:.2f} | "
              f"{gs / gp:.2f}x the group's forward |")
    rows = args.group * len(benchmark)
    print(f"| probe states after an edit ({rows} rows: {args.group} facts x every record), whole model | "
          f"{whole * 1e3:.0f} | 1.00x (of this row) |")
    if resumed is not None:
        print(f"| the same, resumed at the edited layer (largest difference {gap:.1e}) | {resumed * 1e3:.0f} | "
              f"{resumed / whole:.2f}x the whole model |")
    else:
        print("| the same, resumed at the edited layer | - | not applicable: the edit is at layer 0 (the protocol runs "
              "the whole model there too) |")
    if above is not None:
        print(f"| the same, resumed above the edited down-projection (largest difference {gap_above:.1e}) | "
              f"{above * 1e3:.0f} | {above / whole:.2f}x the whole model |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"plain_ms": p * 1e3, "suite_ms": s * 1e3, "probe_ms": q * 1e3, "ratio": s / p,
                       "group": args.group, "group_plain_ms": gp * 1e3, "group_lens_ms": gl * 1e3,
                       "group_lens_ratio": gl / gp if gp else None, "group_suite_ms": gs * 1e3,
                       "group_ratio": gs / gp if gp else None, "probe_states_whole_ms": whole * 1e3,
                       "probe_states_resumed_ms": None if resumed is None else resumed * 1e3,
                       "probe_states_max_difference": gap,
                       "probe_states_above_down_ms": None if above is None else above * 1e3,
                       "probe_states_above_down_max_difference": gap_above}, fh, indent=2)


def probe_states_after_edit(cfg, adapter, benchmark, group: int,  # noqa: ANN001
                            repeats: int) -> tuple[float, float | None, float | None, float | None, float | None]:
    """Median seconds of the probe's training states for a group's edited models: whole, resumed at the edited
    layer (where the protocol does: layers 1 and up) and (where the edit is that layer's down-projection alone)
    resumed above it, with the largest absolute difference of each resumed variant from the whole model."""
    _, _, edit_config, _ = build_components(cfg)
    items = [VLMInput(benchmark.image(r.image), r.question) for r in benchmark.records]
    with BatchedEditor(adapter, edit_config, slots=group) as editor:
        layer = lowest_layer(adapter, editor.module_names)
        at_layer = adapter.resumes_at_layer and layer is not None and 1 <= layer < adapter.num_layers
        stored = adapter.layer_inputs(items, layer) if at_layer else None
        down_only = list(editor.module_names) == [adapter.module_names().mlp_down[layer]] and \
            adapter.resumes_after_mlp_down(layer)
        below_down = adapter.mlp_down_inputs(items, layer) if down_only else None
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for module in editor.modules:
                module.B.copy_(torch.randn(module.B.shape, generator=generator) * 0.1)
        owners = [fact for fact in range(group) for _ in items]
        kinds = ["whole", *(["resumed"] if at_layer else []), *(["above"] if down_only else [])]
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        states = {}
        for _ in range(repeats):
            for kind in kinds:
                t0 = clock(adapter)
                with editor.routed(owners):
                    resume = None if kind == "whole" else stored * group if kind == "resumed" else \
                        below_down.rows(list(range(len(items))) * group)
                    states[kind] = adapter.hidden_states(items * group, resume=resume)
                times[kind].append(clock(adapter) - t0)

    def median_and_gap(kind: str) -> tuple[float | None, float | None]:
        if kind not in states:
            return None, None
        return statistics.median(times[kind]), float((states["whole"] - states[kind]).abs().max())

    (resumed, gap), (above, gap_above) = median_and_gap("resumed"), median_and_gap("above")
    return statistics.median(times["whole"]), resumed, above, gap, gap_above


if __name__ == "__main__":
    main()
