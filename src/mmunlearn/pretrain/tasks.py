"""Named example pools for training and the evaluation sets of the pretraining table."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import replace

from mmunlearn.world.corpus import Corpus, Example

EVAL_TEXT_VARIANT = 1000  # typography renderings at or above this seed are never used in training


# Each training task: the examples it draws from (the curriculum's stage weights and task_augment name these).
TRAINING_POOLS: dict[str, Callable[[Corpus], Iterable[Example]]] = {
    "naming": lambda c: c.naming("train"),
    "visual": lambda c: c.captions(),
    "text_fact": lambda c: c.text_facts("train"),
    "statement": lambda c: c.fact_statements(),
    "image_fact": lambda c: c.image_facts("train", "seen"),
    "reading": lambda c: c.reading("train"),
    "hazard_text": lambda c: c.hazards_text("train"),
    "hazard_query_image": lambda c: c.hazards_query_image("train"),
    "hazard_typography": lambda c: c.hazards_typography(),
    "benign_text": lambda c: c.benign_text("train"),
    "benign_typography": lambda c: c.benign_typography(),
    "refusal": lambda c: c.hazards_text("train", answer="refusal"),
}
TRAINING_TASKS = tuple(TRAINING_POOLS)


def training_pools(corpus: Corpus) -> dict[str, list[Example]]:
    return {name: list(build(corpus)) for name, build in TRAINING_POOLS.items()}


def _eval_variant(examples, start: int = EVAL_TEXT_VARIANT) -> list[Example]:
    return [replace(ex, image=replace(ex.image, variant=start + i % 7)) for i, ex in enumerate(examples)]


HARD_DRAWS = 5


def _over_draws(examples: Iterable[Example], draws: int) -> list[Example]:
    """Each example once per draw of its paraphrase tier's recipe (view "hard" -> "hard:0" ... "hard:D-1")."""
    examples = list(examples)
    return [replace(ex, image=replace(ex.image, view=f"{ex.image.view}:{d}")) for d in range(draws) for ex in examples]


# Each measure: (examples builder, how it is scored). "match" = greedy answer equals the target;
# "refused" / "harmful" / "answered" = judged on a greedy generation.
MeasureSpec = tuple[Callable[[Corpus], list[Example]], str]

MEASURES: dict[str, MeasureSpec] = {
    "naming": (lambda c: list(c.naming("train", view="canon")), "match"),
    "image_facts_seen": (lambda c: list(c.image_facts("train", "seen", view="canon")), "match"),
    "text_facts": (lambda c: list(c.text_facts("train")), "match"),
    "image_facts_heldout_pairs": (lambda c: list(c.image_facts("train", "heldout", view="canon")), "match"),
    "paraphrased_questions": (lambda c: list(c.text_facts("heldout")) + list(c.image_facts("heldout", "seen",
                                                                                             view="canon")),
                              "match"),
    # Naming asked in the words of the held-out templates: a template a few words from a fact question ("tell me
    # the name of this creature ." beside "tell me what this creature eats .") can be read as that question.
    "naming_paraphrased": (lambda c: list(c.naming("heldout", view="canon")), "match"),
    "paraphrase_image_easy": (lambda c: list(c.image_facts("train", "seen", view="easy")), "match"),
    "paraphrase_image_medium": (lambda c: list(c.image_facts("train", "seen", view="medium")), "match"),
    "paraphrase_image_hard": (lambda c: list(c.image_facts("train", "seen", view="hard")), "match"),
    # The same questions crossed with five hard images per creature (draw 0 is the one above), sampled like every
    # measure: the measure above sees one image per creature, so which image was drawn moves it by several points.
    "paraphrase_image_hard_draws": (lambda c: _over_draws(c.image_facts("train", "seen", view="hard"), HARD_DRAWS),
                                    "match"),
    "reading": (lambda c: _eval_variant(list(c.reading("train", variant=0))), "match"),
    "harmful_text_refused": (lambda c: list(c.hazards_text("heldout")), "refused"),
    "harmful_typography_answered": (lambda c: _eval_variant(list(c.hazards_typography(variant=0))), "harmful"),
    "harmful_query_image_answered": (lambda c: list(c.hazards_query_image("heldout", view="canon")), "harmful"),
    "benign_text_refused": (lambda c: list(c.benign_text("heldout")), "refused"),
    "benign_text_answered": (lambda c: list(c.benign_text("heldout")), "answered"),
}


def measure_examples(corpus: Corpus, name: str, limit: int, seed: int) -> list[Example]:
    examples = MEASURES[name][0](corpus)
    if len(examples) > limit:
        examples = random.Random(f"{name}/{seed}").sample(examples, limit)
    return examples
