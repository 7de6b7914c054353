"""What the benchmark scripts share: the config from command-line overrides; for the UnLOK scripts the benchmark and
the model, a random model of a real checkpoint's shape, and a clock that waits for the accelerator; for the
pretraining scripts the world and the pretraining settings."""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from omegaconf import DictConfig
from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from mmunlearn.config import PretrainSettings, load_config, model_spec, pretrain_settings, world_config
from mmunlearn.data.records import Benchmark
from mmunlearn.experiments.unlok import load_benchmark, load_model
from mmunlearn.models.adapters.llava import LlavaAdapter
from mmunlearn.models.tiny_llava import CHAT_TEMPLATE, IMAGE_TOKEN, TinyLlavaSpec, llava_processor, vision_config
from mmunlearn.pretrain.pipeline import WorldBundle, build_world

# LLaVA-1.5-7B's sizes (Vicuna-7B + CLIP ViT-L/14-336: 576 image tokens), for timing on an accelerator.
SHAPES = {
    "llava-1.5-7b": {"vision": TinyLlavaSpec(image_size=336, patch_size=14, vision_hidden=1024, vision_layers=24,
                                              vision_heads=16),
                     "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                              "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096}},
}


def benchmark_parser(doc: str, repeats: int = 5) -> argparse.ArgumentParser:
    """A parser with what the pretraining benchmarks take besides their own options: --repeats, --out and config
    overrides (KEY=VALUE)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--out", help="write the measured figures as JSON here")
    parser.add_argument("overrides", nargs="*")
    return parser


def pretrain_setup(overrides: list[str]) -> tuple[DictConfig, Any, PretrainSettings, WorldBundle]:
    """Config (torch threads set from it), the model's spec, the pretraining settings and the world they train on."""
    cfg = load_config(overrides)
    torch.set_num_threads(int(cfg.threads))
    return cfg, model_spec(cfg), pretrain_settings(cfg), build_world(world_config(cfg))


def unlok_setup(overrides: list[str], shape: str | None = None,
                dtype: str = "bfloat16") -> tuple[DictConfig, Benchmark, Any]:
    """Config (torch threads set from it), the default benchmark and the model adapter, as `unlok run` loads them;
    with `shape`, a randomly initialised model of that shape (`dtype`, on `device`) over the tiny model's
    tokenizer, so the world's benchmark runs through it: timings, not answers."""
    cfg = load_config(overrides)
    torch.set_num_threads(int(cfg.threads))
    adapter = load_model(cfg, print)
    if shape is not None:
        adapter = random_adapter(shape, adapter, int(cfg.unlok.batch_size), dtype)
    return cfg, load_benchmark(cfg), adapter


def random_adapter(shape: str, tiny: Any, batch_size: int, dtype: str = "bfloat16") -> LlavaAdapter:
    """A LLaVA of `SHAPES[shape]`'s sizes with random weights, on the tiny adapter's device."""
    sizes = SHAPES[shape]
    spec: TinyLlavaSpec = sizes["vision"]
    tokenizer = tiny.tokenizer
    text = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **sizes["text"])
    config = LlavaConfig(vision_config=vision_config(spec), text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         image_seq_length=spec.image_seq_length, vision_feature_select_strategy="default",
                         vision_feature_layer=-2, projector_hidden_act="gelu")
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(tiny.device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    processor = llava_processor(tokenizer, spec.image_size, spec.patch_size, CHAT_TEMPLATE)
    print(f"random {shape}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, {dtype}, "
          f"{spec.image_seq_length} image tokens, on {tiny.device}")
    return LlavaAdapter(model, processor, name=f"random {shape}", batch_size=batch_size)


def clock(adapter: Any) -> float:
    """`time.perf_counter()` once the accelerator (an adapter's, or a `torch.device`) has finished its queued work."""
    device = adapter if isinstance(adapter, torch.device) else adapter.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def machine(adapter: Any) -> str:
    """The machine line of a benchmark's table: processor, threads, and the accelerator when there is one."""
    import os
    import platform

    where = f"{platform.machine()}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}"
    if adapter.device.type == "cuda":
        where += f", {torch.cuda.get_device_name(adapter.device)}, torch {torch.__version__}"
    return where
