"""Batched independent edits vs sequential edits: facts edited per second, side by side, same outcomes.

Usage: python benchmarks/batched_edits.py [--facts 32] [--slots 16] [--repeats 3] [--protocol]
       [--out results.json] [KEY=VALUE overrides...]
Uses the cached tiny model (pretrained on first use) and the packaged UnLOK edit settings. For each defense,
edits the same facts one by one with `Editor` and in groups of `--slots` with `BatchedEditor` (started from
the same LoRA initialisation), checks that every fact's greedy answer after the edit is the same both ways,
and prints the median facts/s of each and their ratio.

`--protocol`: the whole per-fact protocol instead (measurements, every defense, every attack, relearning),
one fact at a time (`Protocol.run_fact`) vs in groups of `--slots` (`Protocol.run_group`: batched edits,
merged measurement and attack calls), with every attack outcome compared fact by fact.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import torch
from common import SHAPES, clock, machine, unlok_setup

from mmunlearn.attacks.relearning import Relearning
from mmunlearn.defenses.batched_editor import BatchedEditor, lora_init
from mmunlearn.defenses.editor import EditExamples, Editor
from mmunlearn.experiments.unlok import build_components, protocol_config
from mmunlearn.experiments.unlok_protocol import Protocol, target_string
from mmunlearn.models.adapters.base import VLMInput

DEFENSES = ("fact_erasure", "error_injection", "head_projection", "input_rephrasing")


def examples_for(benchmark, records, defense, config) -> list[EditExamples]:
    out = []
    for r in records:
        image = benchmark.image(r.image)
        target = target_string(defense, r, config)
        out.append(EditExamples([VLMInput(image, p + r.question, target) for p in defense.prompt_prefixes()]))
    return out


def protocol_side_by_side(cfg, adapter, benchmark, n_facts: int, slots: int) -> dict:
    """The full protocol on the same facts, one by one and in groups; seconds and identical outcomes."""
    defenses, attacks, edit_config, relearn_config = build_components(cfg)
    config = protocol_config(cfg)
    records = benchmark.records[:n_facts]

    def relearner(router=None):  # noqa: ANN001, ANN202
        return Relearning(adapter, relearn_config, seed=config.seed, max_new_tokens=config.max_new_tokens,
                          router=router) if relearn_config else None

    with Editor(adapter, edit_config) as editor:
        init = lora_init(editor)
        protocol = Protocol(adapter, benchmark, editor, defenses, attacks, config, relearner(),
                            edited_modules=editor.module_names)
        protocol.prime()
        t0 = clock(adapter)
        sequential = [protocol.run_fact(r) for r in records]
        seq_seconds = clock(adapter) - t0
    with BatchedEditor(adapter, edit_config, slots=slots, init=init) as batched:
        protocol = Protocol(adapter, benchmark, None, defenses, attacks, config, relearner(batched.router),
                            edited_modules=batched.module_names)
        protocol.prime()
        t0 = clock(adapter)
        grouped = [rows for start in range(0, len(records), slots)
                   for rows in protocol.run_group(records[start:start + slots], batched)]
        grp_seconds = clock(adapter) - t0

    def outcomes(rows_per_fact):  # noqa: ANN001, ANN202
        return [(r["fact"], r["defense"], r["attack"], r["success"]) for rows in rows_per_fact for r in rows
                if r["type"] == "attack"]

    seq_out, grp_out = outcomes(sequential), outcomes(grouped)
    return {"facts": len(records), "slots": slots, "sequential_seconds": seq_seconds, "grouped_seconds": grp_seconds,
            "ratio": seq_seconds / grp_seconds, "outcomes": len(seq_out),
            "same_outcomes": sum(a == b for a, b in zip(seq_out, grp_out))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=32)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--defenses", nargs="+", choices=DEFENSES, default=list(DEFENSES))
    parser.add_argument("--protocol", action="store_true", help="time the whole per-fact protocol")
    parser.add_argument("--shape", choices=sorted(SHAPES),
                        help="time a randomly initialised model of this shape (on the config's device)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="of the --shape model")
    parser.add_argument("--out")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg, benchmark, adapter = unlok_setup(args.overrides, args.shape, args.dtype)
    defenses, _, edit_config, _ = build_components(cfg)
    if args.protocol:
        r = protocol_side_by_side(cfg, adapter, benchmark, args.facts, args.slots)
        print(f"\nmachine: {machine(adapter)}; the whole protocol, {r['facts']} facts")
        print("| protocol | seconds | facts/s | s per fact |")
        print("|---|---|---|---|")
        sides = (("one fact at a time", "sequential_seconds"), (f"groups of {r['slots']}", "grouped_seconds"))
        for label, key in sides:
            print(f"| {label} | {r[key]:.1f} | {r['facts'] / r[key]:.2f} | {r[key] / r['facts']:.2f} |")
        print(f"ratio {r['ratio']:.2f}x; identical attack outcomes {r['same_outcomes']}/{r['outcomes']}")
        if args.out:
            with open(args.out, "w", encoding="utf-8") as fh:
                json.dump(r, fh, indent=2)
        return
    config = protocol_config(cfg)
    records = benchmark.records[:args.facts]
    lens = list(range(adapter.num_layers // 2, adapter.num_layers + 1))
    rows = []
    if adapter.device.type != "cpu":  # kernels chosen and memory pooled before any timing, for both batch shapes
        warm = defenses[args.defenses[0]]
        warm_examples = examples_for(benchmark, records[:args.slots], warm, config)
        with Editor(adapter, edit_config) as editor:
            editor.edit(warm, warm_examples[0], lens)
        with BatchedEditor(adapter, edit_config, slots=args.slots) as batched:
            batched.edit_many(warm, warm_examples, lens)
    for name in args.defenses:
        defense = defenses[name]
        examples = examples_for(benchmark, records, defense, config)
        probes = [[VLMInput(benchmark.image(r.image), r.question)] for r in records]
        seq_times, bat_times = [], []
        seq_answers: list[str] = []
        bat_answers: list[str] = []
        for _ in range(args.repeats):
            with Editor(adapter, edit_config) as editor:
                init = lora_init(editor)
                seq_answers = []
                elapsed = 0.0
                for ex, probe in zip(examples, probes):
                    t0 = clock(adapter)
                    editor.edit(defense, ex, lens)
                    elapsed += clock(adapter) - t0  # the edits only; the check below is not timed
                    seq_answers.append(adapter.generate(probe, max_new_tokens=4)[0])
                    editor.restore()
                seq_times.append(elapsed)
            with BatchedEditor(adapter, edit_config, slots=args.slots, init=init) as batched:
                bat_answers = []
                elapsed = 0.0
                for start in range(0, len(examples), args.slots):
                    group = examples[start:start + args.slots]
                    t1 = clock(adapter)
                    batched.edit_many(defense, group, lens)
                    elapsed += clock(adapter) - t1
                    for i in range(len(group)):
                        with batched.slot(i):
                            bat_answers.append(adapter.generate(probes[start + i], max_new_tokens=4)[0])
                    batched.restore()
                bat_times.append(elapsed)
        same = sum(a == b for a, b in zip(seq_answers, bat_answers))
        seq_rate = len(records) / statistics.median(seq_times)
        bat_rate = len(records) / statistics.median(bat_times)
        rows.append({"defense": name, "facts": len(records), "slots": args.slots,
                     "sequential_facts_per_s": seq_rate, "batched_facts_per_s": bat_rate,
                     "ratio": bat_rate / seq_rate, "same_answers": same, "steps": edit_config.steps})
    print(f"\nmachine: {machine(adapter)}; "
          f"{edit_config.steps} steps per edit, median of {args.repeats}")
    print("| defense | facts | sequential facts/s | batched facts/s (slots) | ratio | same greedy answer |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['defense']} | {r['facts']} | {r['sequential_facts_per_s']:.1f} | "
              f"{r['batched_facts_per_s']:.1f} ({r['slots']}) | {r['ratio']:.2f}x | {r['same_answers']}/{r['facts']} |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"rows": rows, "machine": platform.machine(), "threads": torch.get_num_threads()}, fh, indent=2)


if __name__ == "__main__":
    main()
