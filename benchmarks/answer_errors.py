"""Why image questions are missed: each wrong answer classified against the world.

Usage: python benchmarks/answer_errors.py MODEL_DIR [KEY=VALUE overrides...]
(MODEL_DIR: a pretrained tiny model, e.g. the `models/tiny-*` directory `pretrain_accuracy.py --cache DIR`
kept; the overrides must describe the world it was trained on.)
A wrong answer is the look-alike's value of the asked attribute, another creature's value of it, one of the
creature's own other attributes, or none of these. Look-alike answers mean the image was answered by how it
looks, not through the creature's identity. A second table asks the model to name the creature of each view
(canonical, easy, medium, hard): where naming a view fails, its questions cannot be answered through the name.
A third table splits the paraphrased questions (held-out templates) by template, text or image form: a
template a model misreads shows as one row near 0%, and "answer, then more" counts answers that begin
with the right words and do not stop there (scored wrong, as the benchmark scores them).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmunlearn.config import load_config, model_spec, world_config
from mmunlearn.pretrain.batches import Encoder, PixelBank
from mmunlearn.pretrain.evaluate import answer_matches, generate, normalize_answer
from mmunlearn.pretrain.pipeline import build_world
from mmunlearn.pretrain.tasks import measure_examples
from mmunlearn.world.corpus import Example
from mmunlearn.world.entities import World

NAMING_VIEWS = ("canon", "easy", "medium", "hard")
SUBJECT = "<name>"
MEASURES = ("image_facts_heldout_pairs", "paraphrase_image_easy", "paraphrase_image_medium", "paraphrase_image_hard")


def error_kind(world: World, ex: Example, response: str) -> str:
    answer = normalize_answer(response)
    creature = world.creatures[ex.creature]
    if answer == normalize_answer(ex.answer):
        return "correct"
    if answer == normalize_answer(world.creatures[world.lookalike[ex.creature]].attributes[ex.attribute]):
        return "look-alike's value"
    if any(answer == normalize_answer(o.attributes[ex.attribute]) for o in world.creatures):
        return "another creature's value"
    if any(answer == normalize_answer(v) for k, v in creature.attributes.items() if k != ex.attribute):
        return "own other attribute"
    return "none of these"


def template_of(world: World, ex: Example) -> str:
    """The question with the creature's name replaced by <name> (the image form names no creature)."""
    if ex.image is not None:
        return f"image: {ex.prompt}"
    return f"text: {ex.prompt.replace(world.creatures[ex.creature].name, SUBJECT)}"


def paraphrase_outcome(ex: Example, response: str) -> str:
    if answer_matches(response, ex.answer):
        return "correct"
    answer, said = normalize_answer(ex.answer).split(), normalize_answer(response).split()
    return "answer, then more" if said[:len(answer)] == answer else "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.overrides)
    torch.set_num_threads(int(cfg.threads))
    spec, bundle = model_spec(cfg), build_world(world_config(cfg))
    model = AutoModelForImageTextToText.from_pretrained(args.model_dir).eval()
    processor = AutoProcessor.from_pretrained(args.model_dir)
    bank = PixelBank(bundle.world, processor.image_processor, spec.image_size)
    encoder = Encoder(processor.tokenizer, spec.image_seq_length, bank, 0, 0)
    kinds = ("correct", "look-alike's value", "another creature's value", "own other attribute", "none of these")
    print("| measure | n | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for name in MEASURES:
        examples = measure_examples(bundle.corpus, name, int(cfg.pretrain.eval_limit), int(cfg.pretrain.seed))
        texts = generate(model, encoder, examples, max_new_tokens=6)
        counts = Counter(error_kind(bundle.world, ex, t) for ex, t in zip(examples, texts))
        print(f"| {name} | {len(examples)} | " + " | ".join(str(counts[k]) for k in kinds) + " |")
    print("\n| naming, by view | n | named |\n|---|---|---|")
    for view in NAMING_VIEWS:
        examples = list(bundle.corpus.naming("train", view=view))
        texts = generate(model, encoder, examples, max_new_tokens=6)
        named = sum(answer_matches(t, ex.answer) for ex, t in zip(examples, texts)) / len(examples)
        print(f"| {view} | {len(examples)} | {named:.1%} |")
    outcomes = ("correct", "answer, then more", "other")
    examples = measure_examples(bundle.corpus, "paraphrased_questions", int(cfg.pretrain.eval_limit),
                                int(cfg.pretrain.seed))
    texts = generate(model, encoder, examples, max_new_tokens=6)
    by_template: dict[str, Counter] = {}
    for ex, text in zip(examples, texts):
        by_template.setdefault(template_of(bundle.world, ex), Counter())[paraphrase_outcome(ex, text)] += 1
    print("\n| paraphrased question template | n | " + " | ".join(outcomes) + " |\n|---|---|" + "---|" * len(outcomes))
    for template, counts in sorted(by_template.items()):
        print(f"| {template} | {sum(counts.values())} | " + " | ".join(str(counts[k]) for k in outcomes) + " |")


if __name__ == "__main__":
    main()
