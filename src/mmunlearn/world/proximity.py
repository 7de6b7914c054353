"""Samples at graded distance from a creature's canonical image, as UnLOK-VQA defines them.

Paraphrase images show the same creature, changed more at each tier (easy/medium/hard).
Neighbour images show other creatures, closer in looks at each tier: easy = few shared traits,
medium = two traits apart, hard = the look-alike one trait apart. Fixed per (world seed, creature).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mmunlearn.world.entities import Creature, World
from mmunlearn.world.render import View, sample_view

TIERS = ("easy", "medium", "hard")
PARAPHRASE_STRENGTH = {"easy": 0.3, "medium": 0.65, "hard": 0.9}


@dataclass(frozen=True)
class Proximity:
    creature: int
    paraphrase_views: dict[str, View]
    neighbours: dict[str, int]  # tier -> index of the neighbour creature


def paraphrase_view(seed: int, creature: int, tier: str, draw: int = 0) -> View:
    """The tier's view of a creature (draw 0, the benchmark's); other draws are other views of the same recipe,
    for measuring a tier on more than one image per creature."""
    rng = random.Random(f"paraphrase/{seed}/{creature}/{tier}" + (f"/{draw}" if draw else ""))
    hard = tier == "hard"
    return sample_view(rng, PARAPHRASE_STRENGTH[tier], occlude=hard, style=hard)


def pick_neighbours(world: World, creature: Creature) -> dict[str, int]:
    rng = random.Random(f"neighbour/{world.seed}/{creature.index}")
    by_distance: dict[int, list[int]] = {}
    for other in world.creatures:
        if other.index != creature.index:
            by_distance.setdefault(creature.trait_distance(other), []).append(other.index)
    far = by_distance.get(4, []) + by_distance.get(3, [])
    mid = by_distance.get(2, []) or far
    return {
        "easy": rng.choice(far or mid),
        "medium": rng.choice(mid),
        "hard": world.lookalike[creature.index],
    }


def proximity(world: World, creature: Creature) -> Proximity:
    return Proximity(
        creature=creature.index,
        paraphrase_views={t: paraphrase_view(world.seed, creature.index, t) for t in TIERS},
        neighbours=pick_neighbours(world, creature),
    )
