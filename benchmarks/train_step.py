"""Seconds per curriculum step of the tiny model's pretraining: bucket split, attention kernel, rehearsal.

Usage: python benchmarks/train_step.py [--batches 6] [--repeats 5] [--out results.json] [KEY=VALUE overrides...]

Draws `--batches` batches from each curriculum stage of the configured pretraining (its task weights and batch
size), renders their images once (so no step waits on rendering), then times one whole training step (forward,
backward, grounding loss, optimiser step) for every variant on the same batches, the variants interleaved within
each repeat so the machine's drift hits them alike. The last row adds the vision warm-up's rehearsal batch
(`pretrain.vision_warmup.rehearsal`, drawn from a pre-rendered sample of the warm-up's renderings: its cost does
not depend on which). Prints padded tokens per step, the median seconds per step and each variant's speed
relative to the first row.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import random
import statistics
import time

import torch
from common import benchmark_parser, pretrain_setup

from mmunlearn.pretrain.batches import Encoder
from mmunlearn.pretrain.pipeline import tiny_setup
from mmunlearn.pretrain.tasks import training_pools
from mmunlearn.pretrain.trainer import GroundingHook, Rehearsal, bucket_cuts, sample_batch, train_step
from mmunlearn.pretrain.vision_warmup import VisionWarmup, identity_keys

VARIANTS = [("rows", "sdpa", False), ("padding", "sdpa", False), ("rows", "eager", False), ("padding", "eager", False),
            ("padding", "eager", True)]
REHEARSAL_SAMPLE = 2000  # pre-rendered warm-up renderings the rehearsal row draws from (all, if fewer)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--batches", type=int, default=6, help="batches drawn per curriculum stage")
    args = parser.parse_args()
    cfg, spec, settings, bundle = pretrain_setup(args.overrides)
    pools = training_pools(bundle.corpus)
    setup = tiny_setup(bundle, spec, settings)
    model, encoder, name_ids, word_ids = setup.model, setup.encoder, setup.name_ids, setup.word_ids
    hook = GroundingHook(model.model.multi_modal_projector)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.train.lr, foreach=True)  # foreach, as the trainer's
    draw = random.Random(0)
    batches = [(stage, sample_batch(pools, stage.weights, settings.train.batch_size, draw))
               for stage in settings.train.stages for _ in range(args.batches)]
    configs = {split: dataclasses.replace(settings.train, bucket_split=split) for split, _, _ in VARIANTS}
    warmup = settings.vision_warmup or VisionWarmup()
    identity = identity_keys(bundle.world, warmup)  # a small world may have fewer than the sample
    keys = random.Random(0).sample(identity, min(REHEARSAL_SAMPLE, len(identity)))
    encoder.bank.pixels(keys)  # rendered once, as the warm-up leaves them
    rehearsal_batch = warmup.rehearsal or 64
    state = copy.deepcopy(model.state_dict())

    def step(index: int, split: str, rehearsal: Rehearsal | None = None) -> None:
        stage, examples = batches[index]
        optimizer.zero_grad(set_to_none=True)
        train_step(model, encoder, examples, stage, configs[split], hook, name_ids, word_ids, random.Random(index),
                   rehearsal=rehearsal)
        optimizer.step()

    for index in range(len(batches)):  # renders every image these batches resolve to, once
        step(index, "rows")
    padded = {split: statistics.mean(_padded_tokens(encoder, ex, settings.train.buckets, split) for _, ex in batches)
              for split, _, _ in VARIANTS}
    real = statistics.mean(sum(len(encoder.encode(e)[0]) for e in ex) for _, ex in batches)
    seconds: dict[tuple[str, str, bool], list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for split, attention, rehearse in VARIANTS:
            model.load_state_dict(state)
            model.set_attn_implementation(attention)
            rehearsal = Rehearsal(keys, rehearsal_batch, warmup.rehearsal_weight) if rehearse else None
            t0 = time.perf_counter()
            for index in range(len(batches)):
                step(index, split, rehearsal)
            seconds[(split, attention, rehearse)].append((time.perf_counter() - t0) / len(batches))
    hook.remove()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}; "
          f"{len(batches)} batches of {settings.train.batch_size} over {len(settings.train.stages)} stages, "
          f"{settings.train.buckets} buckets, {real:.0f} real tokens per step")
    print("| bucket split | attention | rehearsal | padded tokens per step | median s per step | speed vs first row |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(seconds[VARIANTS[0]])
    rows = []
    for split, attention, rehearse in VARIANTS:
        median = statistics.median(seconds[(split, attention, rehearse)])
        batch = rehearsal_batch if rehearse else 0
        rows.append({"bucket_split": split, "attention": attention, "rehearsal": batch, "padded_tokens": padded[split],
                     "seconds_per_step": seconds[(split, attention, rehearse)], "median": median})
        print(f"| {split} | {attention} | {batch} | {padded[split]:.0f} | {median:.3f} | {base / median:.2f}x |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "real_tokens": real, "overrides": args.overrides}, f, indent=2)


def _padded_tokens(encoder: Encoder, examples, buckets: int, split: str) -> int:
    lengths = sorted(len(encoder.encode(e)[0]) for e in examples)
    return sum((b - a) * lengths[b - 1] for a, b in bucket_cuts(lengths, buckets, split) if b > a)


if __name__ == "__main__":
    main()
