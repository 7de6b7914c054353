"""The embedded UnLOK-VQA benchmark: facts of the synthetic world with ground-truth proximity samples.

A fact is (canonical image of a creature, question about one outside-knowledge attribute, its value).
Only pairs the tiny model was taught in image form are used, so the unedited model knows them. Question
paraphrases come from the world's other templates (held-out ones first), paraphrase images are the world's
easy/medium/hard renderings of the same creature, neighbour images are the world's easy/medium/hard
neighbour creatures asked the same question, neighbour questions are the creature's other attributes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from PIL import Image

from mmunlearn.data.records import TIERS, Benchmark, FactRecord, NeighbourImage, NeighbourQuestion
from mmunlearn.errors import ConfigError, DataError
from mmunlearn.world.corpus import FACT_TEMPLATES, IMAGE_SUBJECTS, Corpus, ImageKey, fact_question
from mmunlearn.world.entities import ATTRIBUTES, World
from mmunlearn.world.images import render_key
from mmunlearn.world.proximity import pick_neighbours

N_PARAPHRASES = 4


def creature_ref(index: int, view: str = "canon") -> str:
    """The reference of a world rendering: `creature/<index>/<canon|easy|medium|hard>`."""
    return f"creature/{index}/{view}"


@dataclass
class WorldImages:
    """Renders `creature/<index>/<view>` references at the model's image size (each rendering once)."""

    world: World
    size: int
    _rendered: dict[str, Image.Image] = field(default_factory=dict, repr=False)

    def load(self, ref: str) -> Image.Image:
        if ref not in self._rendered:
            self._rendered[ref] = self._render(ref)
        return self._rendered[ref].copy()

    def _render(self, ref: str) -> Image.Image:
        parts = ref.split("/")
        if len(parts) != 3 or parts[0] != "creature" or not parts[1].isdigit() or \
                parts[2] not in ("canon", *TIERS):
            raise DataError(f"world images: reference {ref!r} names no rendering (creature/<index>/<view>)")
        index = int(parts[1])
        if index >= self.world.size:
            raise DataError(f"world images: reference {ref!r}: creature {index} is outside the world "
                            f"({self.world.size} creatures)")
        return render_key(self.world, ImageKey("creature", index, parts[2]), self.size)


def _paraphrases(attribute: str) -> tuple[str, tuple[str, ...]]:
    train_t, held_t = FACT_TEMPLATES[attribute]
    subject, other = IMAGE_SUBJECTS[0][0], IMAGE_SUBJECTS[1][0]
    question = fact_question(train_t[0], subject)
    candidates = [fact_question(t, other) for t in held_t] + [fact_question(t, other) for t in train_t[1:]]
    return question, tuple(candidates[:N_PARAPHRASES])


def world_records(corpus: Corpus, n_facts: int | None, seed: int) -> list[FactRecord]:
    """`n_facts` facts drawn (seeded) from the image-form pairs the model was taught (None: all of them)."""
    world = corpus.world
    held = corpus.splits.heldout_pairs
    seen = [(c.index, a) for c in world.creatures for a in ATTRIBUTES if (c.index, a) not in held]
    if n_facts is None:
        n_facts = len(seen)
    if n_facts > len(seen):
        raise ConfigError(f"unlok.n_facts={n_facts}: the world has only {len(seen)} image-form facts "
                          f"({world.size} creatures); lower n_facts or raise size")
    rng = random.Random(f"unlok-facts/{world.seed}/{seed}")
    chosen = sorted(rng.sample(seen, n_facts))
    records = []
    for index, attribute in chosen:
        creature = world.creatures[index]
        answer = creature.attributes[attribute]
        alternatives = [v for v in ATTRIBUTES[attribute] if v != answer]
        alt = random.Random(f"unlok-alt/{world.seed}/{index}/{attribute}").choice(alternatives)
        question, paraphrases = _paraphrases(attribute)
        neighbour_questions = tuple(
            NeighbourQuestion(_paraphrases(other)[0], creature.attributes[other])
            for other in ATTRIBUTES if other != attribute and (index, other) not in corpus.splits.heldout_pairs)
        neighbours = pick_neighbours(world, creature)
        records.append(FactRecord(
            id=f"{creature.name}/{attribute}",
            image=creature_ref(index),
            question=question,
            answer=answer,
            alt_answer=alt,
            subject=creature.name,
            question_paraphrases=paraphrases,
            paraphrase_images={t: creature_ref(index, t) for t in TIERS},
            neighbour_questions=neighbour_questions,
            neighbour_images={t: NeighbourImage(creature_ref(n), world.creatures[n].attributes[attribute])
                              for t, n in neighbours.items()},
            meta={"creature": index, "attribute": attribute},
        ))
    return records


def world_benchmark(corpus: Corpus, n_facts: int | None, seed: int, image_size: int) -> Benchmark:
    return Benchmark("world", world_records(corpus, n_facts, seed), WorldImages(corpus.world, image_size))
