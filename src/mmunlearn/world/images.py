"""Turns an `ImageKey` into pixels: the one place that knows how each named rendering is made."""

from __future__ import annotations

import random

from PIL import Image

from mmunlearn.world.corpus import ImageKey
from mmunlearn.world.entities import World
from mmunlearn.world.proximity import TIERS, paraphrase_view
from mmunlearn.world.render import View, render_creature, render_text, sample_view

MAX_TRAIN_STRENGTH = 0.9
TRAIN_OCCLUSION = TRAIN_STYLE = 0.25  # default chances of an occluder / of the outline style per rendering


def training_view(seed: int, creature: int, k: int, occlusion: float = TRAIN_OCCLUSION,
                  style: float = TRAIN_STYLE, max_strength: float = MAX_TRAIN_STRENGTH,
                  strength_power: float = 1.0) -> View:
    """Augmentation k of a creature (k=0 is canonical). Spans easy..hard changes, drawn apart from eval views;
    `occlusion` and `style` are the chances of an occluder and of the outline style. The change's strength is
    `max_strength * u ** strength_power` for a uniform u: 1 spreads it evenly, below 1 favours strong changes."""
    if k == 0:
        return View()
    rng = random.Random(f"train-aug/{seed}/{creature}/{k}")
    if strength_power == 1.0:
        strength = rng.uniform(0.0, max_strength)
    else:
        strength = max_strength * rng.random() ** strength_power
    return sample_view(rng, strength, occlude=rng.random() < occlusion, style=rng.random() < style)


def augment_view(k: int, occlusion: float = TRAIN_OCCLUSION, style: float = TRAIN_STYLE,
                 strength_power: float = 1.0) -> str:
    """The view name of training rendering k drawn with these chances (and strength power): "aug:K" at the
    defaults, else "aug:K:O:S", with ":P" added when the power is not 1."""
    if strength_power != 1.0:
        return f"aug:{k}:{occlusion:g}:{style:g}:{strength_power:g}"
    if (occlusion, style) == (TRAIN_OCCLUSION, TRAIN_STYLE):
        return f"aug:{k}"
    return f"aug:{k}:{occlusion:g}:{style:g}"


def render_key(world: World, key: ImageKey, size: int) -> Image.Image:
    if key.kind == "creature":
        creature = world.creatures[key.creature]
        tier, _, draw = key.view.partition(":")  # "hard" is draw 0, the benchmark's image; "hard:3" another draw
        if key.view == "canon":
            view = View()
        elif tier in TIERS:
            if draw and not draw.isdigit():
                raise ValueError(f"image key view {key.view!r} names no rendering")
            view = paraphrase_view(world.seed, key.creature, tier, int(draw or 0))
        elif key.view.startswith("aug:"):
            k, *chances = key.view[4:].split(":")
            occlusion, style, *power = map(float, chances) if chances else (TRAIN_OCCLUSION, TRAIN_STYLE)
            view = training_view(world.seed, key.creature, int(k), occlusion, style,
                                 strength_power=power[0] if power else 1.0)
        else:
            raise ValueError(f"image key view {key.view!r} names no rendering")
        return render_creature(creature, size, view)
    if key.kind == "text":
        if key.variant < 0:
            raise ValueError("a training text variant must be resolved before rendering")
        rng = None if key.variant == 0 else random.Random(f"text/{world.seed}/{key.variant}/{'|'.join(key.words)}")
        return render_text(list(key.words), size, rng)
    raise ValueError(f"image key kind {key.kind!r} names no rendering")
