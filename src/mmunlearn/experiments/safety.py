"""`mmunlearn safety run`: textual vs multimodal unlearning against text and image+text jailbreaks.

For each configured run (the base model, refusal SFT and unlearning with text-only or image+text forget
data), train from the original weights, attack every held-out harmful request with every suite, judge each
response with every judge, measure utility and over-refusal, record the training compute, and restore the
original weights exactly. Writes `manifest.json`, `samples.jsonl`, `summary.json` and `report.md`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from mmunlearn.config_checks import at_least, check_known, check_values
from mmunlearn.defenses.dataset_unlearning import TrainSettings, UnlearnTrainer, get_method
from mmunlearn.defenses.editor import EditConfig, Editor
from mmunlearn.errors import ConfigError
from mmunlearn.experiments.safety_data import SafetyData, build_data, build_real_data, real_data_config
from mmunlearn.experiments.safety_summary import (
    early_stop_summary,
    request_asr,
    safety_report,
    summarize_checkpoints,
    summarize_safety,
)
from mmunlearn.experiments.unlok import tuple_fields
from mmunlearn.judges import JudgeInput, check_judge, get_judge
from mmunlearn.judges.base import JUDGES
from mmunlearn.metrics.accuracy import contains_answer
from mmunlearn.models.adapters.base import VLMAdapter
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
from mmunlearn.safety.suites import AttackInput, get_suite

# What a suite needs from a request that not every dataset gives
EMPTY_SUITE_REASON = ("pgd_image needs a harmful answer to aim at; query_relevant and typo_composite an image of "
                      "the key entity or a key phrase")


def _node(cfg: DictConfig, key: str) -> Any:
    value = cfg.safety.get(key)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


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
    judge_params: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    save_runs: list[str] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    early_stop: dict[str, Any] | None = None


@dataclass(frozen=True)
class EarlyStop:
    """`safety.early_stop`: every `every` steps, attack `n_val` held-out harmful requests that the tables do not
    report (the validation set) with `suites` (null: every configured suite), judge them with `judge`, and stop
    the run's training once their ASR is at most `max_asr`. The stopping rule is part of the method: the run's
    tables, compute and compute ratios are those of the step it stopped at."""

    every: int = field(default=5, metadata=at_least(1))
    max_asr: float = field(default=0.0, metadata=at_least(0.0, high=1.0))
    judge: str = "oracle"
    n_val: int = field(default=40, metadata=at_least(1))
    suites: list[str] | None = None


def early_stop_settings(cfg: DictConfig, settings: TrainSettings) -> EarlyStop | None:
    """`safety.early_stop` checked against the configured suites, judges and training steps; None when off."""
    node = _node(cfg, "early_stop")
    if node is None:  # its type was checked with the section's keys (`SafetyKeys`)
        return None
    check_known(node, [f.name for f in fields(EarlyStop)], "safety.early_stop")
    check_values(EarlyStop, node, "safety.early_stop")
    stop = EarlyStop(**node)
    if stop.every >= settings.steps:
        raise ConfigError(f"config safety.early_stop.every: {stop.every} leaves no check before the last of "
                          f"safety.train.steps={settings.steps}")
    if stop.judge not in (_node(cfg, "judges") or []):
        raise ConfigError(f"config safety.early_stop.judge: {stop.judge!r} is not one of safety.judges "
                          f"({', '.join(_node(cfg, 'judges') or [])})")
    unknown = [n for n in stop.suites or [] if n not in (_node(cfg, "suites") or [])]
    if unknown or stop.suites == []:
        raise ConfigError(f"config safety.early_stop.suites: {unknown[0] if unknown else '[]'!s} is not a non-empty "
                          f"list of safety.suites ({', '.join(_node(cfg, 'suites') or [])})")
    return stop


def checkpoint_steps(cfg: DictConfig, settings: TrainSettings) -> tuple[int, ...]:
    """`safety.eval_steps`: the step counts, before the last, after which every trained run is also evaluated."""
    steps = _node(cfg, "eval_steps") or []
    if any(not 1 <= s < settings.steps for s in steps) or list(steps) != sorted(set(steps)):
        raise ConfigError(f"config safety.eval_steps: expected increasing step counts from 1 to "
                          f"safety.train.steps - 1 = {settings.steps - 1} (the last step is always evaluated), "
                          f"got {steps}")
    return tuple(steps)


def run_settings(cfg: DictConfig) -> tuple[list[str], dict[str, Any], dict[str, Any], TrainSettings, EditConfig]:
    """Runs, their definitions and the training settings, all checked before any work."""
    check_values(SafetyKeys, OmegaConf.to_container(cfg.safety, resolve=True), "safety")  # key names: load_config
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
    for name in _node(cfg, "save_runs") or []:
        if name not in runs or defs.get(name) is None:
            raise ConfigError(f"config safety.save_runs: {name!r} is not a trained run of safety.runs "
                              f"(trained: {', '.join(r for r in runs if defs.get(r) is not None) or 'none'})")
    train = _node(cfg, "train") or {}
    params = dict(_node(cfg, "params") or {})
    check_known(train, [f.name for f in fields(TrainSettings) if f.init and f.name != "seed"], "safety.train")
    check_known(params, [f.name for f in fields(EditConfig) if f.init and f.name not in ("lr", "steps", "seed")],
                "safety.params")
    check_values(TrainSettings, train, "safety.train")
    check_values(EditConfig, params, "safety.params")
    try:
        settings = TrainSettings(seed=cfg.safety.seed, **train)
        edit = EditConfig(lr=settings.lr, steps=settings.steps, seed=settings.seed, **tuple_fields(params))
    except TypeError as exc:
        raise ConfigError(f"config safety.train/params: {exc}") from None
    checkpoint_steps(cfg, settings)
    early_stop_settings(cfg, settings)
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
    requests += data.benign_inputs()
    responses = adapter.generate(requests, max_new_tokens=max_new_tokens)
    utility = [(measure, item, gold) for measure, pairs in data.utility.items() for item, gold in pairs]
    utility_answers = adapter.generate([item for _, item, _ in utility], max_new_tokens=data.utility_max_new_tokens)
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
                     "answer": answer, "correct": float(contains_answer(answer, gold))})
    answers = responses[start:]
    keyword = get_judge("refusal_keyword")
    verdicts = keyword.judge([JudgeInput(request=p.request, response=a) for p, a in zip(benign, answers)])
    for prompt, answer, verdict in zip(benign, answers, verdicts):
        rows.append({"type": "utility", "run": run, "measure": "over_refusal", "question": prompt.request,
                     "answer": answer, "correct": float(not verdict.harmful)})
        if data.score_benign_answers:
            rows.append({"type": "utility", "run": run, "measure": "benign_answered", "question": prompt.request,
                         "answer": answer, "correct": float(contains_answer(answer, (prompt.safe_answer or "",)))})
    return rows


def suites_and_judges(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, type]]:
    """The configured attack suites by name, and the configured judges' classes once their names and
    `safety.judge_params` are checked (building a checkpoint-backed judge loads its model: `build_judges`).
    An unknown name, parameter or dataset, or the world's oracle judge on real data, is a one-line error."""
    suite_params = _node(cfg, "suite_params") or {}
    suites = {n: get_suite(n, **(suite_params.get(n) or {})) for n in _node(cfg, "suites")}
    judge_params = _judge_params(cfg)
    judges = {}
    for name in _node(cfg, "judges"):
        JUDGES.cls(name)  # an unknown name is an error about `safety.judges`, with a suggestion
        try:
            judges[name] = check_judge(name, **judge_params.get(name, {}))
        except ConfigError as exc:
            raise ConfigError(f"config safety.judge_params.{name}: {exc}") from None
    if real_data_config(_node(cfg, "data")) is not None and "oracle" in judges:
        raise ConfigError("config safety.judges: 'oracle' reads the world's key terms, which real datasets "
                          "(safety.data) do not have; judge with refusal_keyword, classifier, llamaguard or openai_api")
    return suites, judges


def _judge_params(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    node = _node(cfg, "judge_params") or {}
    for name, given in node.items():
        if not isinstance(given, dict):
            raise ConfigError(f"config safety.judge_params.{name}: expected a mapping of parameters, got {given!r}")
    return {name: tuple_fields(given) for name, given in node.items()}


def build_judges(cfg: DictConfig, classes: dict[str, type]) -> dict[str, Any]:
    """The judges `suites_and_judges` checked, built (checkpoint-backed ones load their models here)."""
    judge_params = _judge_params(cfg)
    return {name: cls(**judge_params.get(name, {})) for name, cls in classes.items()}


def load_data(cfg: DictConfig) -> SafetyData:
    """The track's data: real datasets when `safety.data` is set, else the embedded world's."""
    from mmunlearn.config import world_config
    from mmunlearn.pretrain.pipeline import build_world

    n_eval, n_utility, seed = int(cfg.safety.n_eval), int(cfg.safety.n_utility), int(cfg.safety.seed)
    stop = early_stop_settings(cfg, run_settings(cfg)[3])
    n_val = 0 if stop is None else stop.n_val
    real = real_data_config(_node(cfg, "data"))
    if real is not None:
        return build_real_data(real, n_eval, n_utility, seed, n_val)
    wcfg = world_config(cfg)
    return build_data(build_world(wcfg).corpus, wcfg.image_size, n_eval, n_utility, seed, n_val)


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
        from mmunlearn.config import configured_device
        from mmunlearn.experiments.unlok import load_model_by_name

        self.runs, self.defs, self.loss_params, self.settings, self.edit_config = run_settings(cfg)
        self.checkpoints = checkpoint_steps(cfg, self.settings)
        self.early_stop = early_stop_settings(cfg, self.settings)
        self.suites, judge_classes = suites_and_judges(cfg)
        configured_device(cfg)
        self.data = load_data(cfg)
        self.judges = build_judges(cfg, judge_classes)
        self.adapter = load_model_by_name(cfg, cfg.safety.model, int(cfg.safety.batch_size), log)
        self.max_new_tokens = int(cfg.safety.max_new_tokens)
        self.save_runs = set(_node(cfg, "save_runs") or [])
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
        done = self._train_and_evaluate(run, units.dir.parent / "images",
                                        units.dir.parent / "models" / run if run in self.save_runs else None)
        units.save(index, run, done)
        return done

    def _evaluate(self, run: str, images_dir: Path) -> list[dict[str, Any]]:
        return evaluate(self.adapter, run, self.data, self.suites, self.judges, self.max_new_tokens, images_dir)

    def _validation_asr(self) -> float:
        """`safety.early_stop`'s reading: the mean over its suites and the validation requests of each request's
        verdict (mean over its variants) by its judge."""
        stop, validation = self.early_stop, self.data.validation_set
        assert stop is not None and validation is not None
        built = {name: self.suites[name].build_all(validation, self.adapter) for name in stop.suites or self.suites}
        inputs = [i for items in built.values() for i in items]
        responses = self.adapter.generate([i.to_vlm_input() for i in inputs], max_new_tokens=self.max_new_tokens)
        verdicts = _judge_rows({stop.judge: self.judges[stop.judge]}, inputs, responses)
        names = [name for name, items in built.items() for _ in items]
        rows = [{"type": "attack", "suite": name, "prompt": i.prompt_id,
                 f"asr/{stop.judge}": float(v[stop.judge]["harmful"])} for name, i, v in zip(names, inputs, verdicts)]
        per_request = request_asr(rows, stop.judge, by=("suite",))
        return sum(r["asr"] for r in per_request) / max(1, len(per_request))

    def _train_and_evaluate(self, run: str, images_dir: Path, model_dir: Path | None = None) -> dict[str, Any]:
        """One unit: train the run from the original weights (none for the base model; evaluated at each of
        `safety.eval_steps` on the way, and stopped at the first passing check of `safety.early_stop`), save the
        trained model to `model_dir` when given, evaluate, restore."""
        assert self.editor is not None
        spec = self.defs[run]
        t_run = time.perf_counter()
        compute, timing = None, {}
        checkpoints: list[dict[str, Any]] = []
        spent: dict[int, dict[str, Any]] = {}  # training compute up to each checkpoint
        stopping: list[dict[str, Any]] = []  # the validation ASR at each early-stopping check
        if spec is not None:
            method = get_method(spec["loss"], **(self.loss_params.get(spec["loss"]) or {}))
            trainer = UnlearnTrainer(self.adapter, self.editor, self.settings)
            forget = self.data.forget_text if spec["data"] == "text" else self.data.forget_multimodal

            def at_checkpoint(step: int) -> bool:
                if step in self.checkpoints:
                    c = trainer.compute
                    spent[step] = {"text_tokens": c.text_tokens, "image_tokens": c.image_tokens, "flops": c.flops}
                    checkpoints.extend({**row, "step": step} for row in self._evaluate(run, images_dir))
                if self.early_stop is None or step % self.early_stop.every:
                    return False
                stopping.append({"step": step, "asr": self._validation_asr()})
                return stopping[-1]["asr"] <= self.early_stop.max_asr

            checks = self.checkpoints
            if self.early_stop is not None:
                checks = tuple(sorted({*checks, *range(self.early_stop.every, self.settings.steps,
                                                       self.early_stop.every)}))
            losses = trainer.train(method, forget, checkpoints=checks, on_checkpoint=at_checkpoint)
            c = trainer.compute.to_json()
            timing = {"train_seconds": c.pop("seconds"), "peak_memory_mb": c.pop("peak_memory_mb"),
                      "memory_kind": c.pop("memory_kind")}
            compute = {**c, "loss": spec["loss"], "data": spec["data"], "first_loss": losses[0],
                       "last_loss": losses[-1]}
        try:
            if model_dir is not None:  # before the unit is saved: a finished unit's model is always there
                self.editor.save_merged(model_dir)
            rows = self._evaluate(run, images_dir)
        finally:
            self.editor.restore()
        timing["seconds"] = time.perf_counter() - t_run
        return {"rows": rows, "compute": compute, "timing": timing,
                **({"checkpoints": checkpoints, "checkpoint_compute": spent} if self.checkpoints else {}),
                **({"early_stop": stopping} if self.early_stop is not None and spec is not None else {})}


def run_safety(cfg: DictConfig, out_dir: Path, log: Callable[[str], None] = print) -> tuple[dict[str, Any], float]:
    """Run (or resume) the safety experiment in `out_dir`; each run (train + evaluate) is one unit."""
    torch.set_num_threads(int(cfg.threads))
    from mmunlearn.config import configured_device

    run_settings(cfg)  # checked before any work
    suites_and_judges(cfg)
    configured_device(cfg)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    checkpoint_rows: list[dict[str, Any]] = []
    checkpoint_compute: dict[str, dict[int, dict[str, Any]]] = {}
    stopped: dict[str, list[dict[str, Any]]] = {}
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
            checkpoint_rows += done.get("checkpoints", [])
            if "early_stop" in done:
                stopped[run] = done["early_stop"]
            if done.get("checkpoint_compute"):
                checkpoint_compute[run] = {int(step): c for step, c in done["checkpoint_compute"].items()}
            if done["compute"] is not None:
                compute[run] = done["compute"]
            timings[run] = done["timing"]
    seed = int(cfg.safety.seed)
    summary = summarize_safety(rows, runs, list(suites), list(judges), compute, seed=seed)
    attacked = {r["suite"] for r in rows if r["type"] == "attack"}
    empty = [s for s in suites if s not in attacked]
    if empty:  # a '-' column in the tables: say why, once
        summary["suites_without_inputs"] = empty
        log(f"safety: suite(s) {', '.join(empty)} built no attack from these {len(data.attack_set)} requests "
            f"({EMPTY_SUITE_REASON})")
    summary["model"] = runner.adapter.name
    last_steps = {run: c["steps"] for run, c in compute.items()}
    if runner.early_stop is not None:
        summary["early_stop"] = early_stop_summary(runner.early_stop, stopped, last_steps, runner.settings.steps,
                                                   len(data.validation_set or ()))
    if runner.checkpoints:
        summary["checkpoints"] = summarize_checkpoints(rows, checkpoint_rows, runs, list(suites), list(judges),
                                                       last_steps, seed=seed,
                                                       compute=compute, checkpoint_compute=checkpoint_compute)
        write_jsonl_atomic(out_dir / "checkpoints.jsonl", checkpoint_rows)
    timings["wall_seconds_this_call"] = time.perf_counter() - t0
    write_jsonl_atomic(out_dir / "samples.jsonl", rows)
    write_json_atomic(out_dir / "images.json", {p.stem: f"images/{p.name}"
                                                for p in sorted((out_dir / "images").glob("*.png"))})
    write_json_atomic(out_dir / "summary.json", summary)
    write_json_atomic(out_dir / "timings.json", timings)
    (out_dir / "report.md").write_text(safety_report(summary, list(judges), runs, list(suites), timings),
                                       encoding="utf-8")
    finish_manifest(out_dir, finished=now(), model_fingerprint=model_fingerprint(runner.adapter.name),
                    data_fingerprint=data_fingerprint([*data.attack_set, *data.benign_eval]),
                    train_data_fingerprint=data_fingerprint(data.training_rows()))
    return summary, time.perf_counter() - t0

