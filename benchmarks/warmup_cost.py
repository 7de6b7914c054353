"""What the pretraining spends outside the curriculum's model steps, per unit: rendering, a vision warm-up step.

Usage: python benchmarks/warmup_cost.py [--images 4096] [--cards 2000] [--steps 100] [--repeats 5] [--out FILE.json]
       [KEY=VALUE ...]

Side by side, interleaved within each repeat, on the configured world and model:
- rendering `--images` of the vision warm-up's identity keys in this process: Pillow drawing alone, then through the
  image processor with its resize and crop (the code before) and without them (`pretrain.rendering.same_size_kwargs`,
  the default: the renderings already have the processor's size), with the largest pixel difference between the two;
- `--cards` typography cards of the curriculum (reading and hazard cards, training variants) with each line's glyphs
  drawn anew (the code before) and kept per line (`world.render._glyphs`, the default), with the largest difference;
- `--steps` vision warm-up steps (batch, tower, identity head, AdamW) with the per-tensor AdamW loop (the code before)
  and with `foreach` (the default), from the same weights on the same batches, with the largest weight difference;
- the curriculum's AdamW step over the whole model's tensors, both ways.
Prints median milliseconds per unit and the ratio.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import random
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from common import benchmark_parser, pretrain_setup

from mmunlearn.models.tiny_llava import world_image_processor
from mmunlearn.pretrain.pipeline import tiny_setup
from mmunlearn.pretrain.rendering import render_keys, same_size_kwargs
from mmunlearn.pretrain.vision_warmup import VisionWarmup, identity_keys, identity_logits
from mmunlearn.world import render as world_render
from mmunlearn.world.corpus import ImageKey
from mmunlearn.world.images import render_key


def _median_ms(samples: list[float], per: int) -> float:
    return statistics.median(samples) / per * 1e3


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--images", type=int, default=4096, help="identity keys rendered per repeat")
    parser.add_argument("--cards", type=int, default=2000, help="typography cards rendered per repeat")
    parser.add_argument("--steps", type=int, default=100, help="warm-up steps timed per repeat and variant")
    args = parser.parse_args()
    cfg, spec, settings, bundle = pretrain_setup(args.overrides)
    warmup = settings.vision_warmup or VisionWarmup()
    world, size = bundle.world, spec.image_size
    processor = world_image_processor(size)
    keys = random.Random(0).sample(identity_keys(world, warmup), args.images)

    render: dict[str, list[float]] = {"drawing": [], "processor with resize and crop": [],
                                      "processor, no-op steps skipped": []}
    largest_pixel_difference = 0.0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        images = [render_key(world, key, size) for key in keys]
        t1 = time.perf_counter()
        before = processor(images=images, return_tensors="np")["pixel_values"]
        t2 = time.perf_counter()
        now = processor(images=images, return_tensors="np", **same_size_kwargs(processor, size))["pixel_values"]
        t3 = time.perf_counter()
        render["drawing"].append(t1 - t0)
        render["processor with resize and crop"].append(t2 - t1)
        render["processor, no-op steps skipped"].append(t3 - t2)
        largest_pixel_difference = max(largest_pixel_difference, float(np.abs(before - now).max()))

    corpus = bundle.corpus
    lines = [ex.image.words for ex in [*corpus.reading("train", variant=0), *corpus.hazards_typography(variant=0),
                                       *corpus.benign_typography(variant=0)]]
    draw = random.Random(1)
    cards = [ImageKey("text", words=draw.choice(lines), variant=draw.randrange(1, settings.n_text_variants + 1))
             for _ in range(args.cards)]
    typography: dict[str, list[float]] = {"glyphs drawn anew": [], "glyphs kept": []}
    largest_card_difference = 0
    for _ in range(args.repeats):
        world_render._glyphs.cache_clear()
        t0 = time.perf_counter()
        anew = []
        for key in cards:
            world_render._glyphs.cache_clear()
            anew.append(np.asarray(render_key(world, key, size)))
        t1 = time.perf_counter()
        kept = [np.asarray(render_key(world, key, size)) for key in cards]
        t2 = time.perf_counter()
        typography["glyphs drawn anew"].append(t1 - t0)
        typography["glyphs kept"].append(t2 - t1)
        largest_card_difference = max(largest_card_difference, int(np.abs(
            np.stack(anew).astype(int) - np.stack(kept).astype(int)).max()))

    setup = tiny_setup(bundle, spec, settings)
    setup.model.set_attn_implementation(settings.train.attention)
    tower = setup.model.model.vision_tower
    pixels = render_keys(world, processor, size, keys)
    labels = torch.tensor([k.creature for k in keys])
    torch.manual_seed(0)
    head = torch.nn.Linear(tower.config.hidden_size, len(world.creatures))
    start = copy.deepcopy((tower.state_dict(), head.state_dict()))
    batches = [torch.randint(len(keys), (warmup.batch_size,), generator=torch.Generator().manual_seed(i))
               for i in range(args.steps)]
    steps: dict[bool, list[float]] = {False: [], True: []}
    weights: dict[bool, list[torch.Tensor]] = {}
    tower.train()
    for _ in range(args.repeats):
        for foreach in (False, True):
            tower.load_state_dict(start[0])
            head.load_state_dict(start[1])
            params = [*tower.parameters(), *head.parameters()]
            optimizer = torch.optim.AdamW(params, lr=warmup.lr, weight_decay=settings.train.weight_decay,
                                          foreach=foreach)
            t0 = time.perf_counter()
            for batch in batches:
                loss = F.cross_entropy(identity_logits(tower, head, pixels[batch]), labels[batch],
                                       label_smoothing=warmup.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, settings.train.grad_clip)
                optimizer.step()
            steps[foreach].append(time.perf_counter() - t0)
            weights[foreach] = [p.detach().clone() for p in params]
    largest_weight_difference = max(float((a - b).abs().max()) for a, b in zip(weights[False], weights[True]))

    everything = [p for p in setup.model.parameters() if p.requires_grad]
    for p in everything:
        p.grad = torch.randn_like(p)
    optimiser_steps: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for foreach in (False, True):
            optimizer = torch.optim.AdamW(everything, lr=1e-9, weight_decay=settings.train.weight_decay,
                                          foreach=foreach)
            optimizer.step()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                optimizer.step()
            optimiser_steps[foreach].append(time.perf_counter() - t0)

    n = len(keys)
    rows = [
        ("rendering: drawing, ms per image", _median_ms(render["drawing"], n), None),
        ("rendering: processor, ms per image", _median_ms(render["processor with resize and crop"], n),
         _median_ms(render["processor, no-op steps skipped"], n)),
        ("rendering: drawing + processor, ms per image",
         _median_ms([a + b for a, b in zip(render["drawing"], render["processor with resize and crop"])], n),
         _median_ms([a + b for a, b in zip(render["drawing"], render["processor, no-op steps skipped"])], n)),
        ("typography card (drawing), ms per card", _median_ms(typography["glyphs drawn anew"], len(cards)),
         _median_ms(typography["glyphs kept"], len(cards))),
        (f"vision warm-up step (batch {warmup.batch_size}), ms", _median_ms(steps[False], args.steps),
         _median_ms(steps[True], args.steps)),
        (f"AdamW step over the whole model ({len(everything)} tensors), ms",
         _median_ms(optimiser_steps[False], args.steps), _median_ms(optimiser_steps[True], args.steps)),
    ]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}; "
          f"{n} renderings, {len(cards)} typography cards, {args.steps} warm-up steps, "
          f"{args.repeats} repeats interleaved")
    print("| per unit | before | now | before / now |")
    print("|---|---|---|---|")
    for label, before, now in rows:
        if now is None:
            print(f"| {label} | {before:.3f} | {before:.3f} | - |")
        else:
            print(f"| {label} | {before:.3f} | {now:.3f} | {before / now:.2f}x |")
    print(f"largest pixel difference {largest_pixel_difference}, largest typography difference "
          f"{largest_card_difference}, largest warm-up weight difference "
          f"{largest_weight_difference}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": [{"measure": label, "before_ms": before, "now_ms": now} for label, before, now in rows],
                       "largest_pixel_difference": largest_pixel_difference,
                       "largest_weight_difference": largest_weight_difference,
                       "largest_card_difference": largest_card_difference, "seconds": {
                           "render": render, "typography": typography,
                           "warmup_steps": {str(k): v for k, v in steps.items()},
                           "optimiser_steps": {str(k): v for k, v in optimiser_steps.items()}},
                       "overrides": args.overrides}, f, indent=2)


if __name__ == "__main__":
    main()
