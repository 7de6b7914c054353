"""Pretraining acceptance benchmark: cold wall time and the accuracy table on the default world.

Usage: python benchmarks/pretrain_accuracy.py [--out results.json] [--cache DIR] [--seeds 0,1,2]
       [KEY=VALUE overrides...]
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
from omegaconf import DictConfig

from mmunlearn.config import load_config
from mmunlearn.pretrain.pipeline import pretrain
from mmunlearn.pretrain.report import markdown_table, seeds_table

WALL_TARGET_S = {"tiny": 600, "smol": 1800}  # cold wall-time targets by model kind


def _seed_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def _train_cold(overrides: list[str], cache: str) -> tuple[float, dict, DictConfig]:
    """One cold pretraining into `cache`: its wall time, report and config."""
    cfg = load_config([*overrides, f"paths.cache_dir={cache}"])
    t0 = time.perf_counter()
    result = pretrain(cfg, force=True)
    return time.perf_counter() - t0, result.report, cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the measured figures as JSON here")
    parser.add_argument("--cache", help="train into this new cache directory and keep it (default: a temporary one)")
    parser.add_argument("--seeds", type=_seed_list,
                        help="comma-separated training seeds (pretrain.seed), e.g. 0,1,2: one cold training each, "
                             "then the table over seeds")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.cache and os.path.exists(args.cache) and os.listdir(args.cache):
        parser.error(f"--cache {args.cache}: not empty (a cold run needs a new directory)")
    if args.seeds:
        _over_seeds(args)
        return
    with tempfile.TemporaryDirectory() as scratch:
        wall, report, cfg = _train_cold(args.overrides, args.cache or scratch)
    measures = report["measures"]
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}")
    target = WALL_TARGET_S[str(cfg.model.get("kind", "tiny"))]
    print(f"| pretraining wall time, cold | {wall:.0f} s | - | <= {target} s | {'yes' if wall <= target else 'NO'} |")
    print(markdown_table(measures))
    for name, m in measures.items():
        for prompt, response, ok in m.get("samples", []):
            print(f"  [{name}] {prompt!r} -> {response!r} ({'ok' if ok else 'not ok'})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"wall_seconds": wall, "train_seconds": report["train_seconds"],
                       "measures": measures, "overrides": args.overrides}, f, indent=2)


def _over_seeds(args: argparse.Namespace) -> None:
    """One cold training per seed (each into its own cache under --cache when given), then the table over seeds."""
    runs: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            cache = os.path.join(args.cache or scratch, f"seed-{seed}")
            wall, report, _ = _train_cold([*args.overrides, f"pretrain.seed={seed}"], cache)
            runs[seed] = {"wall_seconds": wall, "measures": report["measures"]}
            print(f"seed {seed}: {wall:.0f} s", flush=True)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}")
    print("wall times: " + ", ".join(f"seed {s} {r['wall_seconds']:.0f} s" for s, r in runs.items()))
    print(seeds_table({s: r["measures"] for s, r in runs.items()}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"seeds": runs, "overrides": args.overrides}, f, indent=2)


if __name__ == "__main__":
    main()
