"""Pretraining acceptance benchmark: cold wall time and the accuracy table on the default world.

Usage: python benchmarks/pretrain_accuracy.py [--out results.json] [--cache DIR] [KEY=VALUE overrides...]
(`model=smol` for the smol model.)
Trains from scratch into a fresh temporary cache (cold), so the wall time includes world building,
rendering, training, evaluation and saving.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch

from mmunlearn.config import load_config
from mmunlearn.pretrain.pipeline import pretrain
from mmunlearn.pretrain.report import markdown_table

WALL_TARGET_S = {"tiny": 600, "smol": 1800}  # cold wall-time targets by model kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the measured figures as JSON here")
    parser.add_argument("--cache", help="train into this new cache directory and keep it (default: a temporary one)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cache = args.cache or scratch
        if args.cache and os.path.exists(args.cache) and os.listdir(args.cache):
            parser.error(f"--cache {args.cache}: not empty (a cold run needs a new directory)")
        cfg = load_config([*args.overrides, f"paths.cache_dir={cache}"])
        t0 = time.perf_counter()
        result = pretrain(cfg, force=True)
        wall = time.perf_counter() - t0
    measures = result.report["measures"]
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}")
    target = WALL_TARGET_S[str(cfg.model.get("kind", "tiny"))]
    print(f"| pretraining wall time, cold | {wall:.0f} s | - | <= {target} s | {'yes' if wall <= target else 'NO'} |")
    print(markdown_table(measures))
    for name, m in measures.items():
        for prompt, response, ok in m.get("samples", []):
            print(f"  [{name}] {prompt!r} -> {response!r} ({'ok' if ok else 'not ok'})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"wall_seconds": wall, "train_seconds": result.report["train_seconds"],
                       "measures": measures, "overrides": args.overrides}, f, indent=2)


if __name__ == "__main__":
    main()
