"""Teaches the vision tower alone to tell creatures apart on many renderings, before the curriculum.

The curriculum's image tasks see a few renderings per creature (`n_augment`) through the language model;
strongly changed images (hard paraphrases: large pose change, occluder, outline style) need far more
variety than that, and a tower trained on identity alone learns it cheaply (no language model in the
loop). A linear head on the mean patch token (what the projector passes on) names the creature; the head
is dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_constant_schedule, get_cosine_schedule_with_warmup

from mmunlearn.errors import ConfigError
from mmunlearn.pretrain.batches import PixelBank
from mmunlearn.pretrain.rendering import pixel_values
from mmunlearn.world.corpus import ImageKey
from mmunlearn.world.entities import World
from mmunlearn.world.images import augment_view
from mmunlearn.world.render import View, render_creature

RENDER_CHUNK = 512
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class VisionWarmup:
    steps: int = 2000
    renderings: int = 200  # per creature, besides the canonical image
    occlusion: float = 0.5  # chance of an occluder per rendering
    style: float = 0.5  # chance of the outline style per rendering
    batch_size: int = 128
    lr: float = 3e-3
    schedule: str = "constant"  # learning-rate schedule: "constant" or "cosine" (to zero, 5% linear warm-up)
    strength_power: float = 1.0  # change strength = max * u ** power: 1 even, below 1 favours strong changes
    rehearsal: int = 0  # renderings of this set grounded to the name per curriculum step (trainer.Rehearsal)
    rehearsal_weight: float = 1.0  # that loss's weight beside the curriculum's answer loss
    label_smoothing: float = 0.0  # of the identity loss: tighter creature clusters, which hard images need

    def __post_init__(self) -> None:
        bad = [f"{name}={value!r} ({rule})" for name, value, ok, rule in (
            ("steps", self.steps, self.steps >= 0, ">= 0"),
            ("renderings", self.renderings, self.renderings >= 0, ">= 0"),
            ("occlusion", self.occlusion, 0 <= self.occlusion <= 1, "in [0, 1]"),
            ("style", self.style, 0 <= self.style <= 1, "in [0, 1]"),
            ("batch_size", self.batch_size, self.batch_size >= 1, ">= 1"), ("lr", self.lr, self.lr > 0, "> 0"),
            ("schedule", self.schedule, self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
            ("strength_power", self.strength_power, self.strength_power > 0, "> 0"),
            ("rehearsal", self.rehearsal, self.rehearsal >= 0, ">= 0"),
            ("rehearsal_weight", self.rehearsal_weight, self.rehearsal_weight >= 0, ">= 0"),
            ("label_smoothing", self.label_smoothing, 0 <= self.label_smoothing < 1, "in [0, 1)"))
            if not ok]
        if bad:
            raise ConfigError(f"config pretrain.vision_warmup: {', '.join(bad)}")


def render_pixels(world: World, image_processor, size: int, views: Sequence[tuple[int, View]],
                  desc: str | None = None) -> torch.Tensor:
    """Pixel values of (creature, view) renderings, in order."""
    chunks = [views[i:i + RENDER_CHUNK] for i in range(0, len(views), RENDER_CHUNK)]
    out = []
    for chunk in tqdm(chunks, desc=desc, disable=None if desc else True):
        images = [render_creature(world.creatures[c], size, v) for c, v in chunk]
        out.append(pixel_values(image_processor, images, size, return_tensors="pt"))
    return torch.cat(out)


def identity_keys(world: World, settings: VisionWarmup) -> list[ImageKey]:
    """Every creature's canonical image and `renderings` training views: the keys a curriculum task drawing
    that many renderings at the same chances resolves to (`augment_view`; k = 0 is the canonical view)."""
    return [ImageKey("creature", c.index, augment_view(k, settings.occlusion, settings.style, settings.strength_power))
            for c in world.creatures for k in range(settings.renderings + 1)]


def identity_set(bank: PixelBank, settings: VisionWarmup) -> tuple[torch.Tensor, torch.Tensor]:
    """The identity set's pixels (rendered through `bank`, which keeps them) with the creature as label."""
    keys = identity_keys(bank.world, settings)
    return bank.pixels(keys, desc="rendering"), torch.tensor([k.creature for k in keys])


def identity_logits(tower, head: torch.nn.Linear, pixels: torch.Tensor) -> torch.Tensor:
    """Creature logits from the mean patch token (the class token is not what the language model sees)."""
    return head(tower(pixel_values=pixels).last_hidden_state[:, 1:].mean(1))


def lr_schedule(optimizer: torch.optim.Optimizer, settings: VisionWarmup) -> torch.optim.lr_scheduler.LambdaLR:
    """The warm-up's learning rate per step. Cosine to zero lifts the tower's hard-image accuracy a little over
    a constant rate at the same steps (measured with `benchmarks/vision_ceiling.py`)."""
    if settings.schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, settings.steps // 20, settings.steps)
    return get_constant_schedule(optimizer)


def train_identity(tower, pixels: torch.Tensor, labels: torch.Tensor, n_classes: int, settings: VisionWarmup,
                   seed: int, weight_decay: float, grad_clip: float,
                   on_step: Callable[[int, float], None] | None = None) -> torch.nn.Linear:
    """Trains `tower` (in place) and a fresh linear head to name the creature of each image; returns the head."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(tower.config.hidden_size, n_classes)
    params = [*tower.parameters(), *head.parameters()]
    # foreach: the same updates, bit for bit, in one call over the tensors (1.6 ms of a ~30 ms step on 2 cores)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=weight_decay, foreach=True)
    scheduler = lr_schedule(optimizer, settings)
    rows = torch.Generator().manual_seed(seed)
    was_training = tower.training
    tower.train()
    for step in tqdm(range(settings.steps), desc="vision warm-up", unit="step", disable=None):
        batch = torch.randint(len(labels), (settings.batch_size,), generator=rows)
        loss = F.cross_entropy(identity_logits(tower, head, pixels[batch]), labels[batch],
                               label_smoothing=settings.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        scheduler.step()
        if on_step is not None:
            on_step(step, loss.item())
    tower.train(was_training)
    return head


def warm_up_tower(tower, bank: PixelBank, settings: VisionWarmup, seed: int, weight_decay: float,
                  grad_clip: float, log: Callable[[str], None] = print) -> list[dict]:
    """Renders the identity set through `bank` and trains the tower on it. Returns the loss log (mean
    identity loss over each fifth of the steps), which is also written through `log`."""
    pixels, labels = identity_set(bank, settings)
    world = bank.world
    every = max(1, settings.steps // 5)
    window: list[float] = []
    entries: list[dict] = []

    def on_step(step: int, loss: float) -> None:
        window.append(loss)
        if (step + 1) % every == 0 or step + 1 == settings.steps:
            entries.append({"step": step + 1, "identity_loss": sum(window) / len(window)})
            window.clear()
            log(f"vision warm-up step {step + 1}/{settings.steps} identity loss {entries[-1]['identity_loss']:.3f}")

    train_identity(tower, pixels, labels, len(world.creatures), settings, seed, weight_decay, grad_clip, on_step)
    return entries
