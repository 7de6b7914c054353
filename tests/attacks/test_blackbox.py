"""Blackbox attacks: pair construction, the judge, seeding, and each attack on a scripted and the micro model."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mmunlearn.attacks import AttackContext, get_attack
from mmunlearn.attacks.blackbox import (
    DEFAULT_PREFIXES,
    DEFAULT_TEMPLATES,
    SUBJECT_FALLBACK,
    answer_in_text,
    cross_pairs,
    fill_template,
)
from mmunlearn.data.records import Benchmark, FactRecord
from mmunlearn.errors import ConfigError
from mmunlearn.models.adapters.base import VLMInput
from mmunlearn.models.row_sampling import row_seeds

# ---------------------------------------------------------------------- a scripted model


class StubImages:
    def load(self, ref: str) -> Image.Image:
        image = Image.new("RGB", (4, 4))
        image.info["ref"] = ref
        return image


class ScriptedAdapter:
    """Answers "Fish." for the easy paraphrase image and for questions mentioning an expert, else "no idea"."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[int] | None, int, float, float]] = []

    def sample(self, items: list[VLMInput], seeds: list[list[int]], max_new_tokens: int = 32,
               temperature: float = 1.0, top_p: float = 1.0) -> list[list[str]]:
        self.calls.append((sum(map(len, seeds)), [s for row in seeds for s in row], max_new_tokens, temperature,
                           top_p))
        answers = ["Fish." if item.image.info["ref"].endswith("easy") or "expert" in item.question else "no idea"
                   for item in items]
        return [[a] * len(s) for a, s in zip(answers, seeds)]


RECORD = FactRecord(id="r0", image="c/0/canon", question="What does it eat?", answer="fish", alt_answer="seeds",
                    aliases=("small fish",), subject="foukax",
                    question_paraphrases=("What is its food?", "Name its diet.", "What does it feed on?",
                                          "Its meal?", "A fifth one?"),
                    paraphrase_images={"easy": "c/0/easy", "medium": "c/0/medium", "hard": "c/0/hard"})


def _scripted(record: FactRecord = RECORD, seed: int = 0) -> tuple[AttackContext, ScriptedAdapter]:
    adapter = ScriptedAdapter()
    return AttackContext(adapter, Benchmark("stub", [record], StubImages()), record, seed=seed), adapter


# ---------------------------------------------------------------------- judge


@pytest.mark.parametrize(("text", "found"), [
    ("Fish.", True), ("a FISH swims", True), ("it eats fish, mostly", True), ("fish", True),
    ("fishing", False), ("catfish", False), ("", False), ("seeds", False),
])
def test_answer_in_text_is_case_insensitive_and_matches_whole_words(text: str, found: bool) -> None:
    assert answer_in_text(text, ["fish"]) is found


def test_answer_in_text_normalises_answers_and_tries_every_alias() -> None:
    assert answer_in_text("The Small-Fish!", ["The small fish"])
    assert answer_in_text("seeds and nuts", ["fish", "nuts"])
    assert not answer_in_text("the", ["the"])  # an answer that normalises to nothing never matches


# ---------------------------------------------------------------------- pairs


def test_cross_pairs_is_the_full_product_questions_outer() -> None:
    questions = [("orig", "q")] + [(f"para{i}", f"p{i}") for i in range(4)]
    images = [("orig", "i")] + [(t, t) for t in ("easy", "medium", "hard")]
    pairs = cross_pairs(questions, images)
    assert len(pairs) == 20
    assert len({(p.question, p.image) for p in pairs}) == 20
    assert [(p.question_tag, p.image_tag) for p in pairs[:5]] == [
        ("orig", "orig"), ("orig", "easy"), ("orig", "medium"), ("orig", "hard"), ("para0", "orig")]


@pytest.mark.parametrize(("name", "params", "n_pairs"), [
    ("question_paraphrase", {}, 4), ("question_paraphrase", {"n_paraphrases": 2}, 2),
    ("image_paraphrase", {}, 3), ("image_paraphrase", {"tiers": "medium"}, 1),
    ("image_paraphrase", {"tiers": "cumulative"}, 4), ("multimodal", {}, 20), ("multimodal", {"n_paraphrases": 1}, 8),
    ("prefix", {}, len(DEFAULT_PREFIXES) + len(DEFAULT_TEMPLATES)), ("prefix", {"templates": []}, 5),
])
def test_pair_counts(name: str, params: dict, n_pairs: int) -> None:
    ctx, _ = _scripted()
    prompts, _ = get_attack(name, **params).prompts(ctx)
    assert len(prompts) == n_pairs


def test_templates_fill_subject_and_append_the_question_when_absent() -> None:
    assert fill_template("Think of {subject}.", "foukax", "Q?") == "Think of foukax. Q?"
    assert fill_template("{question} ({subject})", "", "Q?") == f"Q? ({SUBJECT_FALLBACK})"
    ctx, _ = _scripted()
    prompts, _ = get_attack("prefix", prefixes=["Hey. "], templates=["About {subject}: {question}"]).prompts(ctx)
    assert [p.question for p in prompts] == ["Hey. What does it eat?", "About foukax: What does it eat?"]


# ---------------------------------------------------------------------- attacks on the scripted model


def test_budget_is_pairs_times_samples_and_one_generation_call() -> None:
    ctx, adapter = _scripted()
    out = get_attack("multimodal", n_samples=3, max_new_tokens=5, temperature=0.7, top_p=0.9).run(ctx)
    assert out.budget == 20 * 3 and len(out.candidates) == 60
    assert out.details["n_questions"] == 5 and out.details["n_images"] == 4 and out.details["n_pairs"] == 20
    assert adapter.calls == [(60, row_seeds(ctx.seed_for("multimodal"), 60), 5, 0.7, 0.9)]
    assert out.success and out.scores["image/easy"] and not out.scores["image/hard"]
    assert out.scores["attack_frac"] == pytest.approx(5 / 20)
    json.dumps(out.to_json())


def test_image_paraphrase_reports_each_tier_and_cumulative_success() -> None:
    ctx, _ = _scripted()
    out = get_attack("image_paraphrase", n_samples=2).run(ctx)
    assert out.success and out.budget == 6
    assert {k: v for k, v in out.scores.items() if k.startswith("tier/")} == {
        "tier/easy": True, "tier/medium": False, "tier/hard": False}
    cumulative = get_attack("image_paraphrase", tiers="cumulative", n_samples=1).run(ctx)
    assert cumulative.scores["upto/orig"] is False and cumulative.scores["upto/easy"] is True
    assert cumulative.scores["upto/hard"] is True and cumulative.budget == 4
    hard = get_attack("image_paraphrase", tiers="hard").run(ctx)
    assert not hard.success and hard.scores == {"success": False, "attack_frac": 0.0, "tier/hard": False}


def test_missing_tiers_and_paraphrases_give_zero_budget_not_an_error() -> None:
    bare = FactRecord(id="r1", image="c/1/canon", question="Q?", answer="fish", alt_answer="seeds",
                      paraphrase_images={"easy": "c/1/easy"})
    ctx, adapter = _scripted(bare)
    out = get_attack("image_paraphrase").run(ctx)
    assert out.budget == 5 and out.details["missing_tiers"] == ["medium", "hard"]
    none = get_attack("question_paraphrase").run(ctx)
    assert none.budget == 0 and not none.success and "skipped" in none.details
    assert len(adapter.calls) == 1  # nothing to sample, no call


def test_prefix_attack_scores_prefixes_and_templates_apart() -> None:
    ctx, _ = _scripted()
    out = get_attack("prefix", n_samples=1).run(ctx)
    assert out.success and out.scores["templates"] and not out.scores["prefixes"]
    assert out.budget == len(DEFAULT_PREFIXES) + len(DEFAULT_TEMPLATES)


@pytest.mark.parametrize(("params", "words"), [
    ({"n_samples": 0}, "n_samples"), ({"temperature": 0}, "temperature"), ({"top_p": 1.5}, "top_p"),
    ({"tiers": "eazy"}, "tiers"),
])
def test_bad_sampling_parameters_are_config_errors(params: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        get_attack("image_paraphrase", **params)


@pytest.mark.parametrize("templates", [["{answer} is it"], ["{subject"], "one string"])
def test_bad_templates_are_config_errors(templates) -> None:
    with pytest.raises(ConfigError, match="template"):
        get_attack("prefix", templates=templates)


# ---------------------------------------------------------------------- the micro model


def test_seeded_sampling_is_reproducible_and_seed_dependent(micro_adapter, micro_benchmark) -> None:
    record = micro_benchmark.records[0]
    attack = get_attack("question_paraphrase", n_samples=2, max_new_tokens=4)
    runs = [attack.run(AttackContext(micro_adapter, micro_benchmark, record, seed=s)).candidates for s in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


@pytest.mark.parametrize("name", ["question_paraphrase", "image_paraphrase", "multimodal", "prefix"])
def test_blackbox_attacks_end_to_end_on_the_micro_model(micro_adapter, micro_benchmark, name: str) -> None:
    record = micro_benchmark.records[1]
    attack = get_attack(name, n_samples=2, max_new_tokens=4)
    prompts, _ = attack.prompts(AttackContext(micro_adapter, micro_benchmark, record))
    out = attack.run(AttackContext(micro_adapter, micro_benchmark, record, seed=3)).to_json()
    assert out["kind"] == "blackbox" and out["budget"] == 2 * len(prompts) > 0
    assert len(out["candidates"]) == out["budget"] and all(isinstance(t, str) for t in out["candidates"])
    assert 0.0 <= out["scores"]["attack_frac"] <= 1.0 and out["success"] == out["scores"]["success"]
    assert sum(p["hits"] for p in out["details"]["pairs"]) == round(out["scores"]["attack_frac"] * out["budget"])
    json.dumps(out)
    assert attack.run(AttackContext(micro_adapter, micro_benchmark, record, seed=3)).to_json() == out
