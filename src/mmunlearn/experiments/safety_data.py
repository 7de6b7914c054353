"""The safety track's data: forget, retain, attacked and benign requests, from the world or real datasets.

With `safety.data: null` everything comes from the embedded world (its fictional hazards, facts and benign
requests). With `safety.data` set, it comes from real safety datasets read by `mmunlearn.safety.loaders`, as
in the textual-unlearning study on a real VLM: harmful requests with harmful answers to forget (PKU-SafeRLHF),
requests with safe answers to keep (PKU-SafeRLHF's safe responses, VLGuard), harmful requests to attack
(FigStep, MM-SafetyBench, JailBreakV-28K) and benign ones for over-refusal (VLGuard's safe instructions).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmunlearn.config_checks import at_least, check_known, check_values
from mmunlearn.data.proximity_pipeline import read_items_jsonl
from mmunlearn.data.unlok_format import FolderImages
from mmunlearn.defenses.dataset_unlearning import UnlearnData
from mmunlearn.errors import ConfigError, DataError
from mmunlearn.models.adapters.base import VLMInput
from mmunlearn.safety.loaders import check_loader_options, load_safety_set
from mmunlearn.safety.records import SafetySet
from mmunlearn.safety.suites import AttackInput, get_suite, plain_request
from mmunlearn.safety.world_set import world_benign_set, world_safety_set
from mmunlearn.world.corpus import REFUSAL, Corpus, ImageKey
from mmunlearn.world.images import render_key

FORGET_IMAGE_SUITES = ("query_relevant", "figstep")  # the image+text forms of the forget requests
ROLES = ("forget", "retain", "attacks", "benign")


@dataclass
class SafetyData:
    forget_text: UnlearnData
    forget_multimodal: UnlearnData
    attack_set: SafetySet
    benign_eval: SafetySet
    utility: dict[str, list[tuple[VLMInput, tuple[str, ...]]]]  # measure -> (question, accepted answers)
    score_benign_answers: bool = True  # world benign requests have a short gold answer; real ones do not
    validation_set: SafetySet | None = None  # harmful requests outside attack_set, for `safety.early_stop`
    utility_max_new_tokens: int = 6  # world answers are a word or two; a real model's VQA answer may be longer

    def training_rows(self) -> list[dict[str, Any]]:
        """What the runs train on (every forget, refusal and normal row of both modalities, and the random
        answers), with each image as a hash of its pixels: the manifest's fingerprint of the training data,
        which for real datasets is not fixed by the config alone."""
        rows: list[dict[str, Any]] = []
        for modality, data in (("text", self.forget_text), ("multimodal", self.forget_multimodal)):
            for part in ("forget", "refusal", "normal"):
                rows += [{"data": modality, "part": part, "question": i.question, "answer": i.answer,
                          "image": None if i.image is None else
                          hashlib.blake2b(i.image.tobytes() + repr(i.image.size).encode(), digest_size=10).hexdigest()}
                         for i in getattr(data, part)]
            rows.append({"data": modality, "random_answers": data.random_answers})
        return rows

    def benign_inputs(self) -> list[VLMInput]:
        """The benign requests as the model gets them (with their image, where a dataset pairs one)."""
        return [VLMInput(self.benign_eval.image(p) if p.image is not None else None, p.request)
                for p in self.benign_eval]


def _sample(items: list, n: int, tag: str, seed: int) -> list:
    rng = random.Random(f"{tag}/{seed}")
    return rng.sample(items, min(n, len(items)))


def _attack_and_validation(pool: SafetySet, n_eval: int, n_val: int, seed: int) -> tuple[SafetySet, SafetySet | None]:
    """The attacked requests (a seeded sample of the pool) and, when `n_val` > 0, a seeded sample of the rest to
    choose a stopping step on, so the step is never picked on the requests the tables report."""
    attack_set = pool.subset([p.id for p in _sample(list(pool), n_eval, "attack", seed)])
    if not n_val:
        return attack_set, None
    attacked = {p.id for p in attack_set}
    rest = [p for p in pool if p.id not in attacked]
    if not rest:
        raise DataError(f"safety.early_stop: all {len(pool)} harmful requests to attack are in the attack set "
                        f"(safety.n_eval={n_eval}); none is left to validate on (lower safety.n_eval)")
    return attack_set, pool.subset([p.id for p in _sample(rest, n_val, "validation", seed)])


def _image_forms(harmful: SafetySet, answers: dict[str, str | None]) -> list[AttackInput]:
    inputs: list[AttackInput] = []
    for name in FORGET_IMAGE_SUITES:
        inputs += [i for i in get_suite(name).build_all(harmful) if answers.get(i.prompt_id)]
    return inputs


def _forget_data(harmful: Sequence[SafetySet], refusal: str, normal_text: list[VLMInput],
                 normal_mm: list[VLMInput]) -> tuple[UnlearnData, UnlearnData]:
    """Text forget data (the plain requests, no image) and image+text forget data (the same requests in the
    `FORGET_IMAGE_SUITES` forms), each with the harmful answer to forget and the refusal to learn."""
    text_forget, text_refusal, mm_forget, mm_refusal = [], [], [], []
    for prompts in harmful:
        text_forget += [VLMInput(None, plain_request(p), p.harmful_answer) for p in prompts]
        text_refusal += [VLMInput(None, plain_request(p), refusal) for p in prompts]
        answers = {p.id: p.harmful_answer for p in prompts}
        for item in _image_forms(prompts, answers):
            mm_forget.append(item.to_vlm_input(answers[item.prompt_id]))
            mm_refusal.append(item.to_vlm_input(refusal))
    random_answers = sorted({row.answer for row in normal_text if row.answer})
    text = UnlearnData(forget=text_forget, normal=normal_text, refusal=text_refusal, random_answers=random_answers)
    mm = UnlearnData(forget=mm_forget, normal=normal_mm, refusal=mm_refusal, random_answers=random_answers)
    return text, mm


def build_data(corpus: Corpus, image_size: int, n_eval: int, n_utility: int, seed: int, n_val: int = 0) -> SafetyData:
    """The world's data: forget data from the training phrasings; attacks and utility on held-out phrasings."""
    harmful = world_safety_set(corpus, image_size, "train")
    world = corpus.world

    def image_of(c: int) -> Any:
        return render_key(world, ImageKey("creature", c, "canon"), image_size)

    # Normal data (KL / retain) in the runs' modality: text facts and benign requests for textual runs; the
    # same plus image facts for multimodal runs (textual unlearning never sees an image).
    normal_text = [VLMInput(None, e.prompt, e.answer) for e in corpus.text_facts("train")]
    normal_text += [VLMInput(None, p.request, p.safe_answer) for p in world_benign_set(corpus, image_size, "train")]
    normal_text = _sample(normal_text, 600, "normal", seed)
    normal_image = [VLMInput(image_of(e.creature), e.prompt, e.answer)
                    for e in corpus.image_facts("train", view="canon")]
    normal_mm = _sample(normal_text, 300, "normal-mm", seed) + _sample(normal_image, 300, "normal-img", seed)
    text, mm = _forget_data([harmful], REFUSAL, normal_text, normal_mm)
    held = world_safety_set(corpus, image_size, "heldout")
    attack_set, validation = _attack_and_validation(held, n_eval, n_val, seed)
    benign = world_benign_set(corpus, image_size, "heldout")
    benign_eval = benign.subset([p.id for p in _sample(list(benign), n_utility, "benign", seed)])
    utility = {
        "image_facts": [(VLMInput(image_of(e.creature), e.prompt), (e.answer,))
                        for e in _sample(list(corpus.image_facts("heldout", view="canon")), n_utility, "u-img", seed)],
        "text_facts": [(VLMInput(None, e.prompt), (e.answer,))
                       for e in _sample(list(corpus.text_facts("heldout")), n_utility, "u-text", seed)],
        "naming": [(VLMInput(image_of(e.creature), e.prompt), (e.answer,))
                   for e in _sample(list(corpus.naming("heldout", view="canon")), n_utility, "u-name", seed)],
    }
    return SafetyData(text, mm, attack_set, benign_eval, utility, validation_set=validation)


# ------------------------------------------------------------------------------------------ real datasets


@dataclass(frozen=True)
class SetSource:
    """One dataset of `safety.data`: a registered loader, its source (a local path or a hub id) and options."""

    loader: str
    source: str
    options: dict[str, Any] = field(default_factory=dict)

    def load(self) -> SafetySet:
        return load_safety_set(self.loader, self.source, **self.options)


@dataclass(frozen=True)
class DataKeys:
    """What `safety.data` takes besides its four roles (each a dataset or, for forget and retain, a list)."""

    refusal: str = "I'm sorry, but I cannot help with that."  # the refusal SFT target
    n_forget: int = field(default=1000, metadata=at_least(1))  # harmful requests sampled to forget
    n_retain: int = field(default=600, metadata=at_least(2))  # requests with safe answers sampled to keep


@dataclass(frozen=True)
class VQASource:
    """`safety.data.utility`: VQA items (JSONL: image, question, answers, as `unlok build` reads) whose accuracy
    says how much general ability a run kept."""

    items: str
    images: str

    def load(self, n: int, seed: int) -> list[tuple[VLMInput, tuple[str, ...]]]:
        images = FolderImages(Path(self.images))
        chosen = _sample(read_items_jsonl(self.items), n, "u-vqa", seed)
        return [(VLMInput(images.load(item.image), item.question), tuple(item.answers)) for item in chosen]


@dataclass(frozen=True)
class RealData:
    forget: tuple[SetSource, ...]
    retain: tuple[SetSource, ...]
    attacks: SetSource
    benign: SetSource
    keys: DataKeys
    utility: VQASource | None = None


def _set_source(node: Any, where: str) -> SetSource:
    if not isinstance(node, dict):
        raise ConfigError(f"config {where}: expected {{loader, source, options}}, got {node!r}")
    check_known(node, ("loader", "source", "options"), where)
    for key in ("loader", "source"):
        if not isinstance(node.get(key), str) or not node[key].strip():
            raise ConfigError(f"config {where}.{key}: expected a non-empty string, got {node.get(key)!r}")
    options = node.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"config {where}.options: expected a mapping, got {options!r}")
    try:
        check_loader_options(node["loader"], **options)
    except ConfigError as exc:
        raise ConfigError(f"config {where}: {exc}") from None
    return SetSource(node["loader"], node["source"], dict(options))


def real_data_config(node: Any) -> RealData | None:
    """`safety.data` checked (roles, loaders, their options) before any work; None for the world."""
    if node is None:
        return None
    if not isinstance(node, dict):
        raise ConfigError(f"config safety.data: expected null (the world) or a mapping with {', '.join(ROLES)}")
    check_known(node, [*ROLES, "utility", *DataKeys.__dataclass_fields__], "safety.data")
    keys = {k: v for k, v in node.items() if k not in (*ROLES, "utility")}
    missing = [role for role in ROLES if node.get(role) is None]
    if missing:
        raise ConfigError(f"config safety.data.{missing[0]}: missing (real data needs {', '.join(ROLES)})")
    check_values(DataKeys, keys, "safety.data")
    if not str(keys.get("refusal", DataKeys.refusal)).strip():
        raise ConfigError("config safety.data.refusal: expected a non-empty string")
    lists = {}
    for role in ("forget", "retain"):
        given = node[role] if isinstance(node[role], list) else [node[role]]
        if not given:
            raise ConfigError(f"config safety.data.{role}: empty list")
        lists[role] = tuple(_set_source(s, f"safety.data.{role}" + (f"[{i}]" if isinstance(node[role], list) else ""))
                            for i, s in enumerate(given))
    return RealData(lists["forget"], lists["retain"], _set_source(node["attacks"], "safety.data.attacks"),
                    _set_source(node["benign"], "safety.data.benign"), DataKeys(**keys),
                    _vqa_source(node.get("utility")))


def _vqa_source(node: Any) -> VQASource | None:
    if node is None:
        return None
    where = "safety.data.utility"
    if not isinstance(node, dict) or not {"items", "images"} <= set(node):
        raise ConfigError(f"config {where}: expected {{items: VQA JSONL, images: their folder}}, got {node!r}")
    check_known(node, ("items", "images"), where)
    for key in ("items", "images"):
        if not isinstance(node[key], str) or not node[key].strip():
            raise ConfigError(f"config {where}.{key}: expected a path, got {node[key]!r}")
    return VQASource(node["items"], node["images"])


def _described(role: str, source: SetSource) -> str:
    return f"safety.data.{role} ({source.loader} {source.source})"


def _loaded(role: str, sources: Sequence[SetSource], keep: Any, what: str) -> list[SafetySet]:
    """Each source's set cut to the prompts `keep` accepts; none at all is a one-line error naming the role."""
    sets = [source.load().where(keep) for source in sources]
    if not any(len(s) for s in sets):
        raise DataError(f"{', '.join(_described(role, s) for s in sources)}: no {what}")
    return sets


def _sampled(sets: list[SafetySet], n: int, tag: str, seed: int) -> list[SafetySet]:
    """At most `n` prompts over all sets (seeded), each kept in its own set (with its own images)."""
    pairs = [(i, p.id) for i, s in enumerate(sets) for p in s]
    chosen = _sample(pairs, n, tag, seed)
    return [s.subset([pid for j, pid in chosen if j == i]) for i, s in enumerate(sets)]


def _safe_rows(sets: Sequence[SafetySet], with_image: bool, n: int, tag: str, seed: int) -> list[VLMInput]:
    """At most `n` (seeded) requests with their safe answers, with or without an image (only those loaded)."""
    pairs = [(s, p) for s in sets for p in s if (p.image is not None) == with_image]
    return [VLMInput(s.image(p) if with_image else None, p.request, p.safe_answer)
            for s, p in _sample(pairs, n, tag, seed)]


def build_real_data(data: RealData, n_eval: int, n_utility: int, seed: int, n_val: int = 0) -> SafetyData:
    """Real datasets' data: forget the sampled harmful answers, keep the safe answers (text-only requests for
    every run, plus the ones with an image for multimodal runs), attack and ask sampled held-out requests."""
    keys = data.keys
    forget = _sampled(_loaded("forget", data.forget, lambda p: p.harmful and bool(p.harmful_answer),
                              "harmful request with a harmful answer"), keys.n_forget, "forget", seed)
    retain = _loaded("retain", data.retain, lambda p: bool(p.safe_answer), "request with a safe answer")
    normal_text = _safe_rows(retain, False, keys.n_retain, "normal", seed)
    if not normal_text:
        raise DataError(f"{', '.join(_described('retain', s) for s in data.retain)}: no text-only request with a "
                        f"safe answer (every run keeps those; add a text dataset such as pku_saferlhf "
                        f"responses=safe)")
    normal_image = _safe_rows(retain, True, keys.n_retain // 2, "normal-img", seed)
    normal_mm = _sample(normal_text, keys.n_retain - len(normal_image), "normal-mm", seed) + normal_image
    text, mm = _forget_data(forget, keys.refusal, normal_text, normal_mm)
    [attacks] = _loaded("attacks", [data.attacks], lambda p: p.harmful, "harmful request")
    [benign] = _loaded("benign", [data.benign], lambda p: not p.harmful, "benign request (harmful: false)")
    attack_set, validation = _attack_and_validation(attacks, n_eval, n_val, seed)
    benign_eval = benign.subset([p.id for p in _sample(list(benign), n_utility, "benign", seed)])
    utility = {} if data.utility is None else {"vqa": data.utility.load(n_utility, seed)}
    return SafetyData(text, mm, attack_set, benign_eval, utility, score_benign_answers=False,
                      utility_max_new_tokens=16, validation_set=validation)
