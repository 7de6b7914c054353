"""Turns world examples into model tensors fast: pre-tokenised prompts, cached pixels, mixed batches.

Rows with and without images share a batch; `pixel_values` holds the images of image rows only, in
row order, which is how LLaVA scatters image features.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mmunlearn.models.tiny_llava import render_prompt
from mmunlearn.pretrain.rendering import render_keys
from mmunlearn.world.corpus import Example, ImageKey
from mmunlearn.world.entities import World
from mmunlearn.world.images import TRAIN_OCCLUSION, TRAIN_STYLE, augment_view


class PixelBank:
    """Renders each image key once and keeps its pixel tensor. The vision warm-up renders its identity set
    through the bank, so the curriculum's naming renderings (the same keys) are not drawn again; large
    misses render in `workers` processes (`pretrain.rendering`)."""

    def __init__(self, world: World, image_processor, size: int, workers: int = 1) -> None:
        self.world, self.image_processor, self.size, self.workers = world, image_processor, size, workers
        self._cache: dict[ImageKey, torch.Tensor] = {}

    def pixels(self, keys: list[ImageKey], desc: str | None = None) -> torch.Tensor:
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            values = render_keys(self.world, self.image_processor, self.size, missing, self.workers, desc)
            self._cache.update(zip(missing, values))
        return torch.stack([self._cache[k] for k in keys])


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # -100 outside the answer (and its end-of-turn token)
    pixel_values: torch.Tensor | None
    examples: list[Example]
    image_rows: list[int]

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.pixel_values is not None:
            inputs["pixel_values"] = self.pixel_values
        return inputs


@dataclass(frozen=True)
class TaskAugment:
    """One task's own training renderings: `renderings` per creature, each occluded / outlined with these chances.
    Naming on many, often occluded renderings teaches the language model to name hard images while the image
    facts stay on the curriculum's few (`n_augment`), so they are answered through the name."""

    renderings: int
    occlusion: float = TRAIN_OCCLUSION
    style: float = TRAIN_STYLE
    strength_power: float = 1.0  # as `training_view`: below 1 favours strong changes


class Encoder:
    """Tokenises (prompt, answer) pairs once; resolves training image keys to concrete renderings."""

    def __init__(self, tokenizer, image_seq_length: int, bank: PixelBank, n_augment: int, n_text_variants: int,
                 render: Callable[..., str] = render_prompt, task_augment: dict[str, TaskAugment] | None = None):
        self.tokenizer, self.image_seq_length, self.bank = tokenizer, image_seq_length, bank
        self.render = render  # (prompt, has_image, image_seq_length, answer=None) -> the model's chat text
        self.n_augment, self.n_text_variants = n_augment, n_text_variants
        self.task_augment = dict(task_augment or {})  # these tasks' own renderings, not n_augment
        self._ids: dict[tuple[str, str, bool], tuple[list[int], int]] = {}
        self.pad_id = tokenizer.pad_token_id

    def encode(self, ex: Example) -> tuple[list[int], int]:
        key = (ex.prompt, ex.answer, ex.image is not None)
        if key not in self._ids:
            prompt = self.render(ex.prompt, ex.image is not None, self.image_seq_length)
            prompt_ids = self.tokenizer(prompt)["input_ids"]
            full_ids = self.tokenizer(self.render(ex.prompt, ex.image is not None, self.image_seq_length,
                                                  ex.answer))["input_ids"]
            assert full_ids[: len(prompt_ids)] == prompt_ids, "prompt tokens must prefix the full sequence"
            self._ids[key] = (full_ids, len(prompt_ids))
        return self._ids[key]

    def resolve(self, key: ImageKey, rng: random.Random, task: str = "") -> ImageKey:
        if key.kind == "creature" and key.view == "train":
            own = self.task_augment.get(task)
            if own is None:
                return ImageKey("creature", key.creature, augment_view(rng.randrange(self.n_augment)))
            return ImageKey("creature", key.creature,
                            augment_view(rng.randrange(own.renderings), own.occlusion, own.style,
                                                     own.strength_power))
        if key.kind == "text" and key.variant < 0:
            return ImageKey("text", words=key.words, variant=rng.randrange(1, self.n_text_variants + 1))
        return key

    def collate(self, examples: list[Example], rng: random.Random | None = None, side: str = "right") -> Batch:
        rng = rng or random.Random(0)
        encoded = [self.encode(ex) for ex in examples]
        width = max(len(ids) for ids, _ in encoded)
        n = len(examples)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), -100, dtype=torch.long)
        keys, image_rows = [], []
        for row, (ex, (ids, n_prompt)) in enumerate(zip(examples, encoded)):
            start = 0 if side == "right" else width - len(ids)
            input_ids[row, start:start + len(ids)] = torch.tensor(ids)
            attention[row, start:start + len(ids)] = 1
            labels[row, start + n_prompt:start + len(ids)] = torch.tensor(ids[n_prompt:])
            if ex.image is not None:
                keys.append(self.resolve(ex.image, rng, ex.task))
                image_rows.append(row)
        pixels = self.bank.pixels(keys) if keys else None
        return Batch(input_ids, attention, labels, pixels, examples, image_rows)

    def prompts(self, examples: list[Example]) -> Batch:
        """Left-padded prompts only (no answers), for generation: each ends where the answer would start."""
        prompt_ids = [ids[:n_prompt] for ids, n_prompt in (self.encode(ex) for ex in examples)]
        width = max(len(ids) for ids in prompt_ids)
        n = len(examples)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        image_rows = [row for row, ex in enumerate(examples) if ex.image is not None]
        rng = random.Random(0)
        pixels = self.bank.pixels([self.resolve(examples[r].image, rng) for r in image_rows]) if image_rows else None
        return Batch(input_ids, attention, torch.full_like(input_ids, -100), pixels, examples, image_rows)
