"""Textual vs multimodal unlearning: cost per step side by side, and achieved FLOP/s vs a plain matmul.

Usage: python benchmarks/unlearning_cost.py [--steps 30] [--shape llava-1.5-7b] [--out results.json] [KEY=VALUE ...]
Trains the packaged safety config's unlearning loss (Yao et al.) once on text-only and once on image+text
forget data, from the same original weights, and prints per-step wall time (median), tokens, FLOPs and
their multimodal/text ratios, then the FLOP/s the training achieved against a plain matmul on the same
device (1024x1024 fp32 on the CPU; 8192x8192 in the model's dtype on an accelerator). `--shape`: a randomly
initialised model of a real checkpoint's sizes (benchmarks/common.py) instead of the tiny model.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from common import SHAPES, clock, machine, random_adapter

from mmunlearn.config import load_config, world_config
from mmunlearn.defenses.dataset_unlearning import TrainSettings, UnlearnTrainer, get_method
from mmunlearn.defenses.editor import Editor
from mmunlearn.experiments.safety import build_data, run_settings
from mmunlearn.experiments.unlok import load_model_by_name
from mmunlearn.pretrain.pipeline import build_world


def matmul_flops_per_s(adapter, repeats: int = 20) -> float:  # noqa: ANN001
    """FLOP/s of one square matmul on the adapter's device, in its dtype (fp32, 1024 on the CPU)."""
    on_cpu = adapter.device.type == "cpu"
    size, dtype = (1024, torch.float32) if on_cpu else (8192, adapter.dtype)
    a, b = (torch.randn(size, size, device=adapter.device, dtype=dtype) for _ in range(2))
    for _ in range(3):  # warm up
        a @ b
    times = []
    for _ in range(repeats):
        t0 = clock(adapter)
        a @ b
        times.append(clock(adapter) - t0)
    return 2.0 * size ** 3 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--shape", choices=sorted(SHAPES), help="time a randomly initialised model of this shape")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="of the --shape model")
    parser.add_argument("--out")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.overrides)
    torch.set_num_threads(int(cfg.threads))
    _, _, loss_params, settings, edit_config = run_settings(cfg)
    wcfg = world_config(cfg)
    data = build_data(build_world(wcfg).corpus, wcfg.image_size, 10, 10, int(cfg.safety.seed))
    adapter = load_model_by_name(cfg, cfg.safety.model, int(cfg.safety.batch_size), print)
    if args.shape:
        adapter = random_adapter(args.shape, adapter, int(cfg.safety.batch_size), args.dtype)
    method = get_method("yao", **(loss_params.get("yao") or {}))
    settings = TrainSettings(steps=args.steps, batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed)
    results = {}
    with Editor(adapter, edit_config) as editor:
        for kind, forget in (("text", data.forget_text), ("multimodal", data.forget_multimodal)):
            trainer = UnlearnTrainer(adapter, editor, settings)
            stamps: list[float] = [clock(adapter)]
            trainer.train(method, forget, progress=lambda step, loss, stamps=stamps: stamps.append(clock(adapter)))
            step_times = [b - a for a, b in zip(stamps, stamps[1:])]
            c = trainer.compute
            step_seconds = statistics.median(step_times[1:] or step_times)  # the first step warms up
            results[kind] = {"step_seconds": step_seconds,
                             "tokens_per_step": (c.text_tokens + c.image_tokens) / c.steps,
                             "image_tokens_per_step": c.image_tokens / c.steps, "flops_per_step": c.flops / c.steps,
                             "achieved_flops_per_s": c.flops / c.steps / step_seconds}
            editor.restore()
    matmul = matmul_flops_per_s(adapter)
    t, m = results["text"], results["multimodal"]
    print(f"\nmachine: {machine(adapter)}; {adapter.name}; "
          f"{args.steps} steps of batch {settings.batch_size}, LoRA rank {edit_config.rank}")
    print("| per step | text | multimodal | multimodal / text |")
    print("|---|---|---|---|")
    for key, fmt in (("step_seconds", "{:.3f} s"), ("tokens_per_step", "{:.0f}"), ("image_tokens_per_step", "{:.0f}"),
                     ("flops_per_step", "{:.3g}")):
        ratio = f"{m[key] / t[key]:.2f}x" if t[key] else "-"
        print(f"| {key.replace('_', ' ')} | {fmt.format(t[key])} | {fmt.format(m[key])} | {ratio} |")
    print(f"| achieved FLOP/s | {t['achieved_flops_per_s']:.3g} | {m['achieved_flops_per_s']:.3g} | - |")
    size = "1024x1024 fp32" if adapter.device.type == "cpu" else f"8192x8192 {str(adapter.dtype).split('.')[-1]}"
    print(f"| plain {size} matmul FLOP/s | {matmul:.3g} | | training reaches "
          f"{t['achieved_flops_per_s'] / matmul:.1%} / {m['achieved_flops_per_s'] / matmul:.1%} of it |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({**results, "matmul_flops_per_s": matmul}, fh, indent=2)


if __name__ == "__main__":
    main()
