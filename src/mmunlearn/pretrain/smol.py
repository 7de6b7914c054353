"""Pretraining of the `smol` model: images grounded in a pretrained LM's word space, the world taught by LoRA.

Stage 1 (alignment) trains the vision tower and projector alone. Each image's projected tokens are pulled
onto the LM's input embeddings of what the image shows (the creature's name; on a typography card, each
line's word in its band of patches), so the LM reads an image as it reads those words, and no backward pass
through the LM is needed. Stage 2 teaches the world's facts, reading, hazards and the text-only refusal
through LoRA on the LM with the vision side frozen; the LoRA is merged into the weights before saving.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from mmunlearn.errors import ConfigError
from mmunlearn.models.layer_spec import resolve_layers
from mmunlearn.models.smol_llava import (
    SmolLlavaSpec,
    build_model,
    build_processor,
    load_language_model,
    render_prompt,
    resolve_language_model,
)
from mmunlearn.pretrain.batches import Encoder, PixelBank
from mmunlearn.pretrain.trainer import StepLog, TrainConfig, train
from mmunlearn.world.corpus import Example, ImageKey
from mmunlearn.world.entities import World

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FILLER = " "  # what the image slots before a word read as


@dataclass(frozen=True)
class AlignConfig:
    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 30
    mse_weight: float = 1.0
    scale: float = 20.0  # inverse temperature of the cosine logits over the candidate tokens


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 16
    alpha: int = 32
    layers: str = "all"  # a layer spec over the LM's decoder layers (models/layer_spec.py)


def image_bands(world: World, key: ImageKey) -> list[str]:
    """The text an image shows, one entry per horizontal band of patches (top to bottom)."""
    if key.kind == "creature":
        return [f" {world.creatures[key.creature].name}"]
    return [f" {w}" for w in key.words]


class SlotTargets:
    """Token ids the image slots should read as: per band, the word's tokens right-aligned after filler."""

    def __init__(self, world: World, tokenizer, n_slots: int) -> None:
        self.world, self.tokenizer, self.n_slots = world, tokenizer, n_slots
        self.filler = self._ids(FILLER)[-1]
        self._cache: dict[tuple, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, key: ImageKey) -> list[int]:
        content = (key.kind, key.creature, key.words)
        if content not in self._cache:
            bands = image_bands(self.world, key)
            width = self.n_slots // len(bands)
            slots: list[int] = []
            for text in bands:
                ids = self._ids(text)[-width:]
                slots += [self.filler] * (width - len(ids)) + ids
            slots += [self.filler] * (self.n_slots - len(slots))
            self._cache[content] = slots
        return self._cache[content]


def align_vision(model, encoder: Encoder, targets: SlotTargets, keys: list[ImageKey], cfg: AlignConfig, seed: int,
                 on_log: Callable[[str], None] | None = None, log_every: int = 100,
                 progress: Callable[[int], object] | None = None) -> list[dict]:
    """Trains vision tower + projector so each image's tokens land on the LM's embeddings of its words."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    embeddings = model.get_input_embeddings().weight.detach()
    candidates = sorted({i for k in keys for i in targets(k)})
    index = {tok: j for j, tok in enumerate(candidates)}
    table = embeddings[candidates]
    table_unit = F.normalize(table, dim=-1)
    scale_sq = table.pow(2).sum(-1).mean()
    params = list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(opt, cfg.warmup_steps, cfg.steps,
                                                            min_lr_rate=TrainConfig.min_lr_ratio)
    logs, window, start = [], [], time.perf_counter()
    for step in range(cfg.steps):
        batch = [encoder.resolve(rng.choice(keys), rng) for _ in range(cfg.batch_size)]
        pixels = encoder.bank.pixels(batch)
        features = torch.stack(list(model.model.get_image_features(pixel_values=pixels).pooler_output))
        ids = torch.tensor([[index[t] for t in targets(k)] for k in batch])
        logits = cfg.scale * F.normalize(features, dim=-1) @ table_unit.T
        ce = F.cross_entropy(logits.reshape(-1, len(candidates)), ids.reshape(-1))
        mse = (features - table[ids]).pow(2).sum(-1).mean() / scale_sq
        loss = ce + cfg.mse_weight * mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        scheduler.step()
        window.append((ce.item(), mse.item(), (logits.argmax(-1) == ids).float().mean().item()))
        if progress:
            progress(1)
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            ce_m, mse_m, acc = (sum(v) / len(window) for v in zip(*window))
            entry = {"step": step + 1, "ce": ce_m, "mse": mse_m, "slot_acc": acc,
                     "seconds": time.perf_counter() - start}
            logs.append(entry)
            if on_log:
                on_log(f"align {step + 1:5d} ce {ce_m:.3f} mse {mse_m:.3f} slot_acc {acc:.3f} "
                       f"({entry['seconds']:.0f}s)")
            window = []
    return logs


def add_lora(model, settings: LoraSettings):
    """LoRA on the LM's decoder layers only (vision tower and projector stay frozen); returns the peft model."""
    from peft import LoraConfig, get_peft_model

    n_layers = model.config.text_config.num_hidden_layers
    layers = resolve_layers(settings.layers, n_layers, "pretrain.lora.layers")
    pattern = (rf"model\.language_model\.layers\.({'|'.join(map(str, layers))})\."
               rf"(self_attn|mlp)\.({'|'.join(LORA_MODULES)})")
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0, target_modules=pattern)
    return get_peft_model(model, config)


def training_images(pools: dict[str, list[Example]]) -> list[ImageKey]:
    """Every training image key the curriculum uses (training augmentations only, never evaluation views)."""
    keys = {ex.image for pool in pools.values() for ex in pool if ex.image is not None}
    return sorted(keys, key=repr)


@dataclass
class SmolBuild:
    model: object
    processor: object
    encoder: Encoder
    n_params: int
    align_log: list[dict]
    train_log: list[StepLog]


def build_and_train(bundle, spec: SmolLlavaSpec, settings, pools: dict[str, list[Example]], cache: Path,
                    log: Callable[[str], None] = print) -> SmolBuild:
    """Language model -> LLaVA -> alignment -> LoRA curriculum -> merged model, with progress."""
    lm_dir = resolve_language_model(spec.language_model, cache, log)
    tokenizer, lm = load_language_model(lm_dir)
    processor = build_processor(tokenizer, spec)
    torch.manual_seed(settings.train.seed)
    model = build_model(tokenizer, lm, spec)
    del lm
    lora_layers = resolve_layers(settings.lora.layers, model.config.text_config.num_hidden_layers,
                                 "pretrain.lora.layers")
    if settings.train.frozen_layers > min(lora_layers):
        raise ConfigError(f"config pretrain.frozen_layers={settings.train.frozen_layers}: must not exceed the first "
                          f"LoRA layer ({min(lora_layers)}, pretrain.lora.layers={settings.lora.layers!r})")
    bank = PixelBank(bundle.world, processor.image_processor, spec.image_size)
    encoder = Encoder(tokenizer, spec.image_seq_length, bank, settings.n_augment, settings.n_text_variants,
                      render=render_prompt)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"world: {bundle.world.size} creatures; model: {n_params / 1e6:.1f}M parameters (language model from "
        f"{lm_dir})")
    for p in model.parameters():
        p.requires_grad_(False)
    vision = list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters())
    for p in vision:
        p.requires_grad_(True)
    targets = SlotTargets(bundle.world, tokenizer, spec.image_seq_length)
    with tqdm(total=settings.align.steps, desc="align vision", unit="step", disable=None) as bar:
        align_log = align_vision(model, encoder, targets, training_images(pools), settings.align,
                                 settings.train.seed, on_log=bar.write, log_every=settings.log_every,
                                 progress=bar.update)
    for p in vision:
        p.requires_grad_(False)
    peft_model = add_lora(model, settings.lora)
    total = sum(s.steps for s in settings.train.stages)
    with tqdm(total=total, desc="teach world (LoRA)", unit="step", disable=None) as bar:
        def on_log(e: StepLog) -> None:
            bar.write(f"step {e.step:5d} [{e.stage}] loss {e.loss:.3f} token_acc {e.token_acc:.3f} "
                      f"({e.seconds:.0f}s)")
        train_log = train(peft_model.get_base_model(), encoder, pools, settings.train, {}, {}, on_log=on_log,
                          log_every=settings.log_every, progress=bar.update)
    model = peft_model.merge_and_unload()
    model.eval()
    return SmolBuild(model, processor, encoder, n_params, align_log, train_log)
