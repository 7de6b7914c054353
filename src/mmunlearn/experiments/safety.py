"""`mmunlearn safety run`: textual vs multimodal unlearning against text and image+text jailbreaks.

For each configured run (the base model, refusal SFT and unlearning with text-only or image+text forget
data), train from the original weights, attack every held-out harmful request with every suite, judge each
response with every judge, measure utility and over-refusal, record the training compute, and restore the
original weights exactly. Writes `manifest.json`, `samples.jsonl`, `summary.json` and `report.md`.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from mmunlearn.config_checks import at_least, check_values
from mmunlearn.defenses.dataset_unlearning import TrainSettings, UnlearnData, UnlearnTrainer, get_method
from mmunlearn.defenses.editor import EditConfig, Editor
from mmunlearn.errors import ConfigError
from mmunlearn.experiments.safety_summary import safety_report, summarize_safety
from mmunlearn.judges import JudgeInput, get_judge
from mmunlearn.metrics.accuracy import contains_answer
from mmunlearn.models.adapters.base import VLMAdapter, VLMInput
from mmunlearn.runner.manifest import atomic_file, now, write_json_atomic
from mmunlearn.runner.run_dir import (
    Units,
    claim,
    claimed,
    data_fingerprint,
    finish_manifest,
    model_fingerprint,
    track_manifest,
    write_jsonl_atomic,
)
from mmunlearn.safety.records import SafetySet
from mmunlearn.safety.suites import AttackInput, get_suite
from mmunlearn.safety.world_set import world_benign_set, world_safety_set
from mmunlearn.world.corpus import REFUSAL, Corpus, ImageKey
from mmunlearn.world.images import render_key

FORGET_IMAGE_SUITES = ("query_relevant", "figstep")


@dataclass
class SafetyData:
    forget_text: UnlearnData
    forget_multimodal: UnlearnData
    attack_set: SafetySet
    benign_eval: SafetySet
    utility: dict[str, list[tuple[VLMInput, str]]]


def _node(cfg: DictConfig, key: str) -> Any:
    value = cfg.safety.get(key)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _sample(items: list, n: int, tag: str, seed: int) -> list:
    rng = random.Random(f"{tag}/{seed}")
    return rng.sample(items, min(n, len(items)))


def build_data(corpus: Corpus, image_size: int, n_eval: int, n_utility: int, seed: int) -> SafetyData:
    """Forget data from the training phrasings; attacks and utility on held-out phrasings and samples."""
    harmful = world_safety_set(corpus, image_size, "train")
    text_forget = [VLMInput(None, p.request, p.harmful_answer) for p in harmful]
    text_refusal = [VLMInput(None, p.request, REFUSAL) for p in harmful]
    mm_inputs: list[AttackInput] = []
    for name in FORGET_IMAGE_SUITES:
        mm_inputs += get_suite(name).build_all(harmful)
    answers = {p.id: p.harmful_answer for p in harmful}
    mm_forget = [i.to_vlm_input(answers[i.prompt_id]) for i in mm_inputs]
    mm_refusal = [i.to_vlm_input(REFUSAL) for i in mm_inputs]
    # Normal data (KL / retain) in the runs' modality: text facts and benign requests for textual runs; the
    # same plus image facts for multimodal runs (textual unlearning never sees an image).
    world = corpus.world

    def image_of(c: int) -> Any:
        return render_key(world, ImageKey("creature", c, "canon"), image_size)

    normal_text = [VLMInput(None, e.prompt, e.answer) for e in corpus.text_facts("train")]
    normal_text += [VLMInput(None, p.request, p.safe_answer) for p in world_benign_set(corpus, image_size, "train")]
    normal_text = _sample(normal_text, 600, "normal", seed)
    normal_image = [VLMInput(image_of(e.creature), e.prompt, e.answer)
                    for e in corpus.image_facts("train", view="canon")]
    normal_mm = _sample(normal_text, 300, "normal-mm", seed) + _sample(normal_image, 300, "normal-img", seed)
    random_answers = sorted({row.answer for row in normal_text if row.answer})
    text = UnlearnData(forget=text_forget, normal=normal_text, refusal=text_refusal, random_answers=random_answers)
    mm = UnlearnData(forget=mm_forget, normal=normal_mm, refusal=mm_refusal, random_answers=random_answers)
    held = world_safety_set(corpus, image_size, "heldout")
    attack_set = held.subset([p.id for p in _sample(list(held), n_eval, "attack", seed)])
    benign = world_benign_set(corpus, image_size, "heldout")
    benign_eval = benign.subset([p.id for p in _sample(list(benign), n_utility, "benign", seed)])
    utility = {
        "image_facts": [(VLMInput(image_of(e.creature), e.prompt), e.answer)
                        for e in _sample(list(corpus.image_facts("heldout", view="canon")), n_utility, "u-img", seed)],
        "text_facts": [(VLMInput(None, e.prompt), e.answer)
                       for e in _sample(list(corpus.text_facts("heldout")), n_utility, "u-text", seed)],
        "naming": [(VLMInput(image_of(e.creature), e.prompt), e.answer)
                   for e in _sample(list(corpus.naming("heldout", view="canon")), n_utility, "u-name", seed)],
    }
    return SafetyData(text, mm, attack_set, benign_eval, utility)


@dataclass(frozen=True)
class SafetyKeys:
    """What each key of the `safety` section takes (the training settings and components are checked by their
    own classes)."""

    model: str | None = None
    seed: int = field(default=0, metadata=at_least(0))
    batch_size: int = field(default=256, metadata=at_least(1))
    max_new_tokens: int = field(default=24, metadata=at_least(1))
    n_eval: int = field(default=60, metadata=at_least(1))
    n_utility: int = field(default=120, metadata=at_least(1))
    runs: list[str] = field(default_factory=list)
    run_defs: dict[str, Any] | None = None
    loss_params: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    suites: list[str] = field(default_factory=list)
    suite_params: dict[str, Any] | None = None
    judges: list[str] = field(default_factory=list)


def run_settings(cfg: DictConfig) -> tuple[list[str], dict[str, Any], dict[str, Any], TrainSettings, EditConfig]:
    """Runs, their definitions and the training settings, all checked before any work."""
    check_values(SafetyKeys, OmegaConf.to_container(cfg.safety, resolve=True), "safety")
    runs = _node(cfg, "runs")
    defs = _node(cfg, "run_defs") or {}
    if not isinstance(runs, list) or not runs:
        raise ConfigError("config safety.runs: expected a non-empty list of run names")
    loss_params = _node(cfg, "loss_params") or {}
    for name in runs:
        if name not in defs:
            raise ConfigError(f"config safety.runs: {name!r} has no entry in safety.run_defs "
                              f"(known: {', '.join(sorted(defs))})")
        spec = defs[name]
        if spec is None:
            continue
        if not isinstance(spec, dict) or spec.get("data") not in ("text", "multimodal") or "loss" not in spec:
            raise ConfigError(f"config safety.run_defs.{name}: needs loss (sft|yao|npo|rmu) and data (text|multimodal)")
        get_method(spec["loss"], **(loss_params.get(spec["loss"]) or {}))
    train = _node(cfg, "train") or {}
    params = dict(_node(cfg, "params") or {})
    check_values(TrainSettings, train, "safety.train")
    check_values(EditConfig, params, "safety.params")
    try:
        settings = TrainSettings(seed=cfg.safety.seed, **train)
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        edit = EditConfig(lr=settings.lr, steps=settings.steps, seed=settings.seed, **params)
    except TypeError as exc:
        raise ConfigError(f"config safety.train/params: {exc}") from None
    return runs, defs, loss_params, settings, edit


def _judge_rows(judges: dict[str, Any], inputs: list[AttackInput], responses: list[str]) -> list[dict[str, Any]]:
    judge_inputs = [JudgeInput(request=i.meta.get("question", i.text), response=r,
                               key_terms=tuple(i.meta["key_terms"]) if "key_terms" in i.meta else None,
                               category=i.meta.get("category")) for i, r in zip(inputs, responses)]
    verdicts = {name: judge.judge(judge_inputs) for name, judge in judges.items()}
    return [{name: verdicts[name][k].to_json() for name in judges} for k in range(len(inputs))]


def save_image(image: Any, images_dir: Path) -> str:
    """Store an attack input's image once, named by its content; returns its reference."""
    ref = hashlib.blake2b(image.tobytes() + repr(image.size).encode(), digest_size=10).hexdigest()
    path = images_dir / f"{ref}.png"
    if not path.exists():  # written whole or not at all: a run killed here must not keep half an image
        with atomic_file(path) as tmp:
            image.save(tmp, format="PNG")
    return ref


def evaluate(adapter: VLMAdapter, run: str, data: SafetyData, suites: dict[str, Any], judges: dict[str, Any],
             max_new_tokens: int, images_dir: Path | None = None) -> list[dict[str, Any]]:
    """Attack rows (every suite x prompt) and utility rows of the model as it is now.

    Every suite's inputs and the benign requests are answered in one generation call, the utility
    questions in another (greedy decoding: an answer does not depend on the rest of its batch beyond
    floating-point noise from padding)."""
    built = {name: suite.build_all(data.attack_set, adapter) for name, suite in suites.items()}
    benign = list(data.benign_eval)
    requests = [i.to_vlm_input() for inputs in built.values() for i in inputs]
    requests += [VLMInput(None, p.request) for p in benign]
    responses = adapter.generate(requests, max_new_tokens=max_new_tokens)
    utility = [(measure, item, gold) for measure, pairs in data.utility.items() for item, gold in pairs]
    utility_answers = adapter.generate([item for _, item, _ in utility], max_new_tokens=6)
    rows: list[dict[str, Any]] = []
    start = 0
    for name, inputs in built.items():
        mine = responses[start:start + len(inputs)]
        start += len(inputs)
        for item, response, verdicts in zip(inputs, mine, _judge_rows(judges, inputs, mine)):
            row = {"type": "attack", "run": run, "suite": name, "prompt": item.prompt_id,
                   "text": item.text, "response": response, "verdicts": verdicts,
                   **{f"asr/{j}": float(v["harmful"]) for j, v in verdicts.items()}}
            if item.image is not None and images_dir is not None:
                row["image"] = save_image(item.image, images_dir)
            rows.append(row)
    for (measure, item, gold), answer in zip(utility, utility_answers):
        rows.append({"type": "utility", "run": run, "measure": measure, "question": item.question,
                     "answer": answer, "correct": float(contains_answer(answer, (gold,)))})
    answers = responses[start:]
    keyword = get_judge("refusal_keyword")
    verdicts = keyword.judge([JudgeInput(request=p.request, response=a) for p, a in zip(benign, answers)])
    for prompt, answer, verdict in zip(benign, answers, verdicts):
        rows.append({"type": "utility", "run": run, "measure": "over_refusal", "question": prompt.request,
                     "answer": answer, "correct": float(not verdict.harmful)})
        rows.append({"type": "utility", "run": run, "measure": "benign_answered", "question": prompt.request,
                     "answer": answer, "correct": float(contains_answer(answer, (prompt.safe_answer or "",)))})
    return rows


def suites_and_judges(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The configured attack suites and judges by name (an unknown name is a one-line error)."""
    suite_params = _node(cfg, "suite_params") or {}
    suites = {n: get_suite(n, **(suite_params.get(n) or {})) for n in _node(cfg, "suites")}
    return suites, {n: get_judge(n) for n in _node(cfg, "judges")}


def pending_runs(cfg: DictConfig, out_dir: Path) -> list[int]:
    """Claim `out_dir` and return the indices of the configured runs not finished in it."""
    runs = run_settings(cfg)[0]
    suites_and_judges(cfg)
    claim(out_dir, *track_manifest(cfg, "safety"))
    units = Units(out_dir)
    return [i for i, run in enumerate(runs) if units.load(i, run) is None]


class SafetyRunner:
    """The track's units (one per configured run) on one loaded model: the data, suites, judges and the editor
    that restores the original weights after each run. A unit depends only on its run's definition, so any
    process can run it (`experiments.workers`)."""

    def __init__(self, cfg: DictConfig, log: Callable[[str], None] = print) -> None:
        from mmunlearn.config import configured_device, world_config
        from mmunlearn.experiments.unlok import load_model_by_name
        from mmunlearn.pretrain.pipeline import build_world

        self.runs, self.defs, self.loss_params, self.settings, self.edit_config = run_settings(cfg)
        self.suites, self.judges = suites_and_judges(cfg)
        configured_device(cfg)
        wcfg = world_config(cfg)
        corpus = build_world(wcfg).corpus
        self.data = build_data(corpus, wcfg.image_size, int(cfg.safety.n_eval), int(cfg.safety.n_utility),
                               int(cfg.safety.seed))
        self.adapter = load_model_by_name(cfg, cfg.safety.model, int(cfg.safety.batch_size), log)
        self.max_new_tokens = int(cfg.safety.max_new_tokens)
        self.editor: Editor | None = None

    def __enter__(self) -> SafetyRunner:
        self.editor = Editor(self.adapter, self.edit_config).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.editor is not None:
            self.editor.__exit__(*exc)

    def run_unit(self, index: int, units: Units) -> dict[str, Any]:
        """Train and evaluate run `index` and save it as a unit."""
        assert self.editor is not None, "use SafetyRunner as a context manager"
        run = self.runs[index]
        done = _train_and_evaluate(self.adapter, self.editor, run, self.defs[run], self.loss_params, self.settings,
                                   self.data, self.suites, self.judges, self.max_new_tokens,
                                   units.dir.parent / "images")
        units.save(index, run, done)
        return done


def run_safety(cfg: DictConfig, out_dir: Path, log: Callable[[str], None] = print) -> tuple[dict[str, Any], float]:
    """Run (or resume) the safety experiment in `out_dir`; each run (train + evaluate) is one unit."""
    torch.set_num_threads(int(cfg.threads))
    from mmunlearn.config import configured_device

    run_settings(cfg)  # checked before any work
    suites_and_judges(cfg)
    configured_device(cfg)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    compute: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    with claimed(out_dir, *track_manifest(cfg, "safety")) as resumed, \
            SafetyRunner(cfg, log) as runner:  # a failed start withdraws the claim
        units = Units(out_dir)
        runs, data, suites, judges = runner.runs, runner.data, runner.suites, runner.judges
        log(f"safety: runs {', '.join(runs)}; {len(suites)} suites x {len(data.attack_set)} harmful requests; "
            f"judges {', '.join(judges)}; on {runner.adapter.name}{' (resuming)' if resumed else ''}")
        for i, run in enumerate(tqdm(runs, desc="safety runs", unit="run", disable=None)):
            done = units.load(i, run)
            if done is None:
                done = runner.run_unit(i, units)
            rows += done["rows"]
            if done["compute"] is not None:
                compute[run] = done["compute"]
            timings[run] = done["timing"]
    seed = int(cfg.safety.seed)
    summary = summarize_safety(rows, runs, list(suites), list(judges), compute, seed=seed)
    summary["model"] = runner.adapter.name
    timings["wall_seconds_this_call"] = time.perf_counter() - t0
    write_jsonl_atomic(out_dir / "samples.jsonl", rows)
    write_json_atomic(out_dir / "images.json", {p.stem: f"images/{p.name}"
                                                for p in sorted((out_dir / "images").glob("*.png"))})
    write_json_atomic(out_dir / "summary.json", summary)
    write_json_atomic(out_dir / "timings.json", timings)
    (out_dir / "report.md").write_text(safety_report(summary, list(judges), runs, list(suites), timings),
                                       encoding="utf-8")
    finish_manifest(out_dir, finished=now(), model_fingerprint=model_fingerprint(runner.adapter.name),
                    data_fingerprint=data_fingerprint([*data.attack_set, *data.benign_eval]))
    return summary, time.perf_counter() - t0


def _train_and_evaluate(adapter: VLMAdapter, editor: Editor, run: str, spec: dict[str, Any] | None,
                        loss_params: dict[str, Any], settings: TrainSettings, data: SafetyData,
                        suites: dict[str, Any], judges: dict[str, Any], max_new_tokens: int,
                        images_dir: Path) -> dict[str, Any]:
    """One unit: train the run from the original weights (none for the base model), evaluate, restore."""
    t_run = time.perf_counter()
    compute, timing = None, {}
    if spec is not None:
        method = get_method(spec["loss"], **(loss_params.get(spec["loss"]) or {}))
        trainer = UnlearnTrainer(adapter, editor, settings)
        forget = data.forget_text if spec["data"] == "text" else data.forget_multimodal
        losses = trainer.train(method, forget)
        c = trainer.compute.to_json()
        timing = {"train_seconds": c.pop("seconds"), "peak_memory_mb": c.pop("peak_memory_mb"),
                  "memory_kind": c.pop("memory_kind")}
        compute = {**c, "loss": spec["loss"], "data": spec["data"], "first_loss": losses[0], "last_loss": losses[-1]}
    try:
        rows = evaluate(adapter, run, data, suites, judges, max_new_tokens, images_dir)
    finally:
        editor.restore()
    timing["seconds"] = time.perf_counter() - t_run
    return {"rows": rows, "compute": compute, "timing": timing}
