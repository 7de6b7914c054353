"""How well the vision tower alone tells creatures apart at each paraphrase tier, as the warm-up trains it.

Usage: python benchmarks/vision_ceiling.py [--renderings N] [--steps N] [--occlusion P] [--style P] [--schedule S]
[--draws 5] [--out results.json] [KEY=VALUE overrides, e.g. model.vision_hidden=128 model.vision_layers=4]

Runs the pretraining's vision warm-up (`pretrain.vision_warmup`; the options replace its fields) on a fresh
tower of the configured size: the tower and a linear head learn to name the creature of each training
rendering. Then scores canonical and paraphrase images (`--draws` views of each tier's recipe per creature;
draw 0 is the benchmark's image). Identity is all a VLM needs from the image to answer a question about the
creature, so these figures bound what the whole model reaches on paraphrase images with the same tower and
renderings: where they sit below a target, the language model is not what to change. The interval is a 95%
bootstrap over creatures (a creature's draws share its looks).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import torch
from transformers import CLIPVisionModel

from mmunlearn.config import load_config, model_spec, pretrain_settings, world_config
from mmunlearn.metrics.bootstrap import cluster_bootstrap_ci
from mmunlearn.models.tiny_llava import vision_config, world_image_processor
from mmunlearn.pretrain.batches import PixelBank
from mmunlearn.pretrain.pipeline import build_world
from mmunlearn.pretrain.vision_warmup import VisionWarmup, identity_logits, identity_set, render_pixels, train_identity
from mmunlearn.world.proximity import TIERS, paraphrase_view
from mmunlearn.world.render import View


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renderings", type=int, help="training renderings per creature")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--occlusion", type=float, help="chance of an occluder per rendering")
    parser.add_argument("--style", type=float, help="chance of the outline style per rendering")
    parser.add_argument("--schedule", help="learning-rate schedule: cosine or constant")
    parser.add_argument("--draws", type=int, default=5, help="views of each tier's recipe per creature")
    parser.add_argument("--out", help="write the measured figures as JSON here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.overrides)
    torch.set_num_threads(int(cfg.threads))
    spec, world, configured = model_spec(cfg), build_world(world_config(cfg)).world, pretrain_settings(cfg)
    train = configured.train
    fields = ("steps", "renderings", "occlusion", "style", "schedule")
    chosen = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    settings = dataclasses.replace(configured.vision_warmup or VisionWarmup(), **chosen)
    processor, n = world_image_processor(spec.image_size), len(world.creatures)

    t0 = time.perf_counter()
    pixels, labels = identity_set(PixelBank(world, processor, spec.image_size, int(cfg.threads)), settings)
    torch.manual_seed(train.seed)
    tower = CLIPVisionModel(vision_config(spec))
    head = train_identity(tower, pixels, labels, n, settings, train.seed, train.weight_decay, train.grad_clip)
    train_s = time.perf_counter() - t0

    tower.eval()
    results = {}
    sets = {"canonical": lambda c, d: View(), **{t: (lambda c, d, t=t: paraphrase_view(world.seed, c, t, d))
                                                  for t in TIERS}}
    with torch.no_grad():
        for name, view in sets.items():
            draws = 1 if name == "canonical" else args.draws
            views = [(c, view(c, d)) for c in range(n) for d in range(draws)]
            predicted = identity_logits(tower, head, render_pixels(world, processor, spec.image_size, views))
            hits = (predicted.argmax(-1) == torch.tensor([c for c, _ in views])).view(n, draws)
            est = cluster_bootstrap_ci(hits.sum(1).double().numpy(), [draws] * n)
            results[name] = {"rate": est.mean, "low": est.low, "high": est.high, "n": n * draws,
                             "benchmark_image_rate": hits[:, 0].double().mean().item()}
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}; "
          f"tower {spec.vision_hidden}x{spec.vision_layers}, patch {spec.patch_size}; {settings.renderings} renderings "
          f"per creature (occlusion {settings.occlusion}, style {settings.style}); {settings.steps} steps of "
          f"{settings.batch_size}, {settings.schedule} lr; {train_s:.0f} s rendering + training")
    print("| images | identity accuracy [95% CI] | n | the benchmark's image only |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {100 * r['rate']:.1f}% [{100 * r['low']:.1f}%, {100 * r['high']:.1f}%] | {r['n']} | "
              f"{100 * r['benchmark_image_rate']:.1f}% |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"settings": dataclasses.asdict(settings), "draws": args.draws, "overrides": args.overrides,
                       "train_seconds": train_s, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
