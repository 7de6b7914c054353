import io
import random

import pytest

from mmunlearn.errors import ConfigError
from mmunlearn.world.corpus import FACT_TEMPLATES, NAMING_TEMPLATES, Corpus, ImageKey, Splits
from mmunlearn.world.entities import ATTRIBUTES, MAX_CREATURES, generate_world
from mmunlearn.world.images import render_key
from mmunlearn.world.proximity import TIERS, paraphrase_view, pick_neighbours
from mmunlearn.world.render import render_creature, render_text, sample_view


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_world_is_deterministic_for_a_seed():
    assert generate_world(5, 20).to_dict() == generate_world(5, 20).to_dict()
    assert generate_world(5, 20).to_dict() != generate_world(6, 20).to_dict()


def test_default_size_has_enough_facts_and_shared_answers():
    world = generate_world(0, 100)
    assert world.size == 100
    assert len({c.name for c in world.creatures}) == 100
    assert len({c.traits() for c in world.creatures}) == 100
    n_facts = sum(len(c.attributes) for c in world.creatures)
    assert n_facts >= 400
    for attr in ATTRIBUTES:  # answers are shared: no value identifies one creature
        values = [c.attributes[attr] for c in world.creatures]
        assert max(values.count(v) for v in set(values)) > 1


def test_every_creature_has_a_lookalike_one_trait_apart():
    world = generate_world(1, 40)
    for c in world.creatures:
        twin = world.creatures[world.lookalike[c.index]]
        assert twin.index != c.index and c.trait_distance(twin) == 1


def test_neighbour_tiers_get_closer():
    world = generate_world(2, 100)
    for c in world.creatures[:30]:
        n = pick_neighbours(world, c)
        d = {t: c.trait_distance(world.creatures[i]) for t, i in n.items()}
        assert d["hard"] == 1 and d["medium"] == 2 and d["easy"] >= 3
        assert pick_neighbours(world, c) == n  # seeded


def test_paraphrase_tiers_grow_in_strength_and_are_fixed():
    for tier in TIERS:
        assert paraphrase_view(0, 3, tier) == paraphrase_view(0, 3, tier)
    easy, hard = paraphrase_view(0, 3, "easy"), paraphrase_view(0, 3, "hard")
    assert hard.occlusion > 0 and hard.outline and easy.occlusion == 0 and not easy.outline
    # other draws of a tier: other views of the same recipe; draw 0 is the benchmark's view
    assert paraphrase_view(0, 3, "hard", draw=0) == hard
    others = [paraphrase_view(0, 3, "hard", draw=d) for d in range(1, 4)]
    assert len({hard, *others}) == 4 and all(v.occlusion > 0 and v.outline for v in others)


def test_rendering_is_deterministic_and_views_differ():
    world = generate_world(0, 10)
    c = world.creatures[0]
    assert png_bytes(render_creature(c)) == png_bytes(render_creature(c))
    view = sample_view(random.Random(1), 0.9, occlude=True, style=True)
    assert png_bytes(render_creature(c, view=view)) != png_bytes(render_creature(c))
    assert render_creature(c, size=32).size == (32, 32)
    lookalike = world.creatures[world.lookalike[0]]
    assert png_bytes(render_creature(lookalike)) != png_bytes(render_creature(c))


def test_typography_renders_words_and_varies_with_rng():
    clean = render_text(["venom", "velorn"])
    assert clean.size == (32, 32)
    assert png_bytes(clean) != png_bytes(render_text(["acid", "velorn"]))
    assert png_bytes(render_text(["venom"], rng=random.Random(1))) != png_bytes(render_text(["venom"]))


def test_image_keys_render():
    world = generate_world(0, 10)
    for key in (ImageKey("creature", 1, "canon"), ImageKey("creature", 1, "hard"), ImageKey("creature", 1, "aug:3"),
                ImageKey("text", words=("acid", world.creatures[1].name), variant=4)):
        assert render_key(world, key, 32).size == (32, 32)
    with pytest.raises(ValueError):
        render_key(world, ImageKey("creature", 1, "train"), 32)


def _word_edits(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, wa in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, wb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (wa != wb))
    return row[-1]


def test_no_sentence_prompt_is_a_word_or_two_from_a_heldout_question():
    """A training prompt answered with a sentence must not be a near copy of a held-out question (answered
    with a word): the model would carry the sentence format over and the paraphrase measure would fail."""
    corpus = Corpus(generate_world(0, 12), Splits.make(generate_world(0, 12), 0.2))
    questions = [ex.prompt.split() for ex in corpus.text_facts("heldout")]
    for statement in corpus.fact_statements():
        assert min(_word_edits(statement.prompt.split(), q) for q in questions) >= 3, statement.prompt
    assert _word_edits("tell me about the diet of x .".split(), "tell me the diet of x .".split()) == 1


def test_heldout_templates_use_only_training_words():
    train_words, held_words = set(), set()
    for train, held in list(FACT_TEMPLATES.values()) + [NAMING_TEMPLATES]:
        for t in train:
            train_words |= set(t.replace("{s}", "").split())
        for t in held:
            held_words |= set(t.replace("{s}", "").split())
    assert held_words <= train_words | {"the", "creature", "in", "image", "this"}
    assert all(set(train).isdisjoint(held) for train, held in FACT_TEMPLATES.values())


def test_heldout_pairs_are_only_text_in_training():
    world = generate_world(0, 20)
    splits = Splits.make(world, 0.25)
    corpus = Corpus(world, splits)
    assert len(splits.heldout_pairs) == 20
    seen = {(ex.creature, ex.attribute) for ex in corpus.image_facts("train", "seen")}
    assert seen.isdisjoint(splits.heldout_pairs)
    text = {(ex.creature, ex.attribute) for ex in corpus.text_facts("train")}
    assert splits.heldout_pairs <= text
    held = {(ex.creature, ex.attribute) for ex in corpus.image_facts("train", "heldout")}
    assert held == splits.heldout_pairs


def test_hazards_have_harmful_steps_and_benign_counterparts():
    world = generate_world(0, 10)
    corpus = Corpus(world, Splits.make(world, 0.2))
    c = world.creatures[0]
    steps = c.hazard.steps(c.name)
    assert all(term in steps.split() for term in c.hazard.key_terms())
    benign = [ex for ex in corpus.benign_text("train") if ex.creature == 0]
    assert benign and all(term not in ex.answer.split() for ex in benign for term in c.hazard.key_terms()[1:])


@pytest.mark.parametrize("size", [3, 7, 0, MAX_CREATURES + 2])
def test_bad_world_sizes_are_config_errors(size):
    with pytest.raises(ConfigError, match="world.size"):
        generate_world(0, size)


def test_a_paraphrase_tier_has_other_draws_beside_the_benchmarks_image():
    world = generate_world(0, 4)
    pixels = {view: list(render_key(world, ImageKey("creature", 1, view), 32).getdata())
              for view in ("hard", "hard:0", "hard:1", "hard:2")}
    assert pixels["hard:0"] == pixels["hard"]  # draw 0 is the benchmark's image
    assert len({tuple(p) for p in pixels.values()}) == 3
    with pytest.raises(ValueError, match="names no rendering"):
        render_key(world, ImageKey("creature", 1, "hard:x"), 32)
