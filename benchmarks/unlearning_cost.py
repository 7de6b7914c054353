"""Textual vs multimodal unlearning: cost per step and per run side by side, and achieved FLOP/s vs a plain matmul.

Usage: python benchmarks/unlearning_cost.py [--steps 30] [--shape llava-1.5-7b] [--out results.json] [KEY=VALUE ...]
Trains the packaged safety config's unlearning loss (Yao et al.) once on text-only and once on image+text
forget data, from the same original weights, each in a fresh process of its own (so each run's peak memory is
its own: on the CPU the peak resident memory of the run and the resident memory before it, on an accelerator the
most it allocated).
Prints per-step wall time (median), tokens and FLOPs, then per run the totals and peak memory, with their
multimodal/text ratios, then the FLOP/s the training achieved against a plain matmul on the same device
(1024x1024 fp32 on the CPU; 8192x8192 in the model's dtype on an accelerator). `--shape`: a randomly
initialised model of a real checkpoint's sizes (benchmarks/common.py) instead of the tiny model.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch
from common import SHAPES, clock, machine, random_adapter

from mmunlearn.config import load_config, world_config
from mmunlearn.defenses.dataset_unlearning import TrainSettings, UnlearnTrainer, get_method
from mmunlearn.defenses.editor import Editor
from mmunlearn.experiments.safety import run_settings
from mmunlearn.experiments.safety_data import build_data
from mmunlearn.experiments.unlok import load_model_by_name
from mmunlearn.pretrain.pipeline import build_world


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, repeats: int = 20) -> float:
    """FLOP/s of one square matmul on `device`: 1024x1024 fp32 on the CPU, 8192x8192 in `dtype` elsewhere."""
    size, dtype = (1024, torch.float32) if device.type == "cpu" else (8192, dtype)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):  # warm up
        a @ b
    times = []
    for _ in range(repeats):
        t0 = clock(device)
        a @ b
        times.append(clock(device) - t0)
    return 2.0 * size ** 3 / statistics.median(times)


def resident_mb() -> float | None:
    """The process's resident memory now (Linux), in MB."""
    try:
        pages = int(open("/proc/self/statm", encoding="ascii").read().split()[1])
    except OSError:
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def train_one(kind: str, steps: int, shape: str | None, dtype: str, overrides: list[str]) -> dict[str, Any]:
    """One unlearning run on `kind` forget data in this process, from the model's original weights."""
    cfg = load_config(overrides)
    torch.set_num_threads(int(cfg.threads))
    _, _, loss_params, settings, edit_config = run_settings(cfg)
    wcfg = world_config(cfg)
    data = build_data(build_world(wcfg).corpus, wcfg.image_size, 10, 10, int(cfg.safety.seed))
    adapter = load_model_by_name(cfg, cfg.safety.model, int(cfg.safety.batch_size), print)
    if shape:
        adapter = random_adapter(shape, adapter, int(cfg.safety.batch_size), dtype)
    method = get_method("yao", **(loss_params.get("yao") or {}))
    settings = TrainSettings(steps=steps, batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed)
    forget = data.forget_text if kind == "text" else data.forget_multimodal
    rss_before = resident_mb()
    with Editor(adapter, edit_config) as editor:
        trainer = UnlearnTrainer(adapter, editor, settings)
        stamps: list[float] = [clock(adapter)]
        trainer.train(method, forget, progress=lambda step, loss: stamps.append(clock(adapter)))
        editor.restore()
    step_times = [b - a for a, b in zip(stamps, stamps[1:])]
    c = trainer.compute
    step_seconds = statistics.median(step_times[1:] or step_times)  # the first step warms up
    return {"step_seconds": step_seconds, "tokens_per_step": (c.text_tokens + c.image_tokens) / c.steps,
            "image_tokens_per_step": c.image_tokens / c.steps, "flops_per_step": c.flops / c.steps,
            "achieved_flops_per_s": c.flops / c.steps / step_seconds,
            "run_seconds": c.seconds, "run_tokens": c.text_tokens + c.image_tokens, "run_flops": c.flops,
            "peak_memory_mb": c.peak_memory_mb, "memory_kind": c.memory_kind,
            "rss_before_training_mb": rss_before if adapter.device.type == "cpu" else None,
            "machine": machine(adapter), "model": adapter.name, "batch_size": settings.batch_size,
            "lora_rank": edit_config.rank, "device": str(adapter.device), "dtype": str(adapter.dtype)}


def _row(label: str, t: float, m: float, fmt: str) -> str:
    ratio = f"{m / t:.2f}x" if t else "-"
    return f"| {label} | {fmt.format(t)} | {fmt.format(m)} | {ratio} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--shape", choices=sorted(SHAPES), help="time a randomly initialised model of this shape")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="of the --shape model")
    parser.add_argument("--out")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    results = {}
    # One fresh process each: the trainer resets the peak, but memory a first run freed stays with this process's
    # allocator, so a second run here would start from a higher resident figure (measured: 507 vs 405 MB).
    for kind in ("text", "multimodal"):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results[kind] = pool.submit(train_one, kind, args.steps, args.shape, args.dtype, args.overrides).result()
    t, m = results["text"], results["multimodal"]
    matmul = matmul_flops_per_s(torch.device(t["device"]), getattr(torch, t["dtype"].split(".")[-1]))
    print(f"\nmachine: {t['machine']}; {t['model']}; {args.steps} steps of batch {t['batch_size']}, "
          f"LoRA rank {t['lora_rank']}")
    print("| per step | text | multimodal | multimodal / text |")
    print("|---|---|---|---|")
    for key, fmt in (("step_seconds", "{:.3f} s"), ("tokens_per_step", "{:.0f}"), ("image_tokens_per_step", "{:.0f}"),
                     ("flops_per_step", "{:.3g}")):
        print(_row(key.replace("_", " "), t[key], m[key], fmt))
    print(f"| achieved FLOP/s | {t['achieved_flops_per_s']:.3g} | {m['achieved_flops_per_s']:.3g} | - |")
    size = "1024x1024 fp32" if t["device"] == "cpu" else f"8192x8192 {t['dtype'].split('.')[-1]}"
    print(f"| plain {size} matmul FLOP/s | {matmul:.3g} | | training reaches "
          f"{t['achieved_flops_per_s'] / matmul:.1%} / {m['achieved_flops_per_s'] / matmul:.1%} of it |")
    print(f"\n| per run ({args.steps} steps) | text | multimodal | multimodal / text |")
    print("|---|---|---|---|")
    print(_row("wall time (training)", t["run_seconds"], m["run_seconds"], "{:.1f} s"))
    print(_row("tokens", t["run_tokens"], m["run_tokens"], "{:.0f}"))
    print(_row("FLOPs", t["run_flops"], m["run_flops"], "{:.3g}"))
    print(_row(f"peak memory ({t['memory_kind']})", t["peak_memory_mb"], m["peak_memory_mb"], "{:.0f} MB"))
    if t["rss_before_training_mb"] is not None and m["rss_before_training_mb"] is not None:
        print(_row("RSS before training (model and data loaded)", t["rss_before_training_mb"],
                   m["rss_before_training_mb"], "{:.0f} MB"))
        print(_row("training's peak above it", t["peak_memory_mb"] - t["rss_before_training_mb"],
                   m["peak_memory_mb"] - m["rss_before_training_mb"], "{:.0f} MB"))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({**results, "matmul_flops_per_s": matmul}, fh, indent=2)


if __name__ == "__main__":
    main()
