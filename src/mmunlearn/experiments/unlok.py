"""`mmunlearn unlok run`: the UnLOK-VQA experiment end to end, from config to tables.

Loads the model (the cached tiny model by default) and the benchmark (the embedded world's by default),
runs the per-fact protocol for every configured defense and attack, and writes into the output directory:
`manifest.json`, `samples.jsonl` (every measure and attack row), `summary.json` (every estimate with its
95% bootstrap CI) and `report.md` (the defense x attack table, the side-effect table, the two questions).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from mmunlearn.attacks.registry import Attack, get_attack
from mmunlearn.attacks.relearning import RelearnConfig, Relearning
from mmunlearn.data.records import Benchmark
from mmunlearn.defenses.batched_editor import BatchedEditor
from mmunlearn.defenses.editor import EditConfig, Editor, lowest_layer
from mmunlearn.defenses.losses import Defense, get_defense
from mmunlearn.errors import ConfigError
from mmunlearn.experiments.unlok_protocol import Protocol, ProtocolConfig
from mmunlearn.experiments.unlok_summary import summarize
from mmunlearn.models.adapters.base import VLMAdapter
from mmunlearn.runner.manifest import git_sha, now, package_versions, write_json_atomic
from mmunlearn.runner.run_dir import (
    Units,
    claim,
    data_fingerprint,
    finish_manifest,
    model_fingerprint,
    write_jsonl_atomic,
)


@dataclass
class UnlokResult:
    out_dir: Path
    summary: dict[str, Any]
    seconds: float


def _node(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.to_container(cfg.unlok[key], resolve=True) if cfg.unlok.get(key) is not None else None


def _named(cfg: DictConfig, key: str, factory: Callable[..., Any]) -> dict[str, Any]:
    """`unlok.<key>` lists names; `unlok.<key without s>_params` holds parameters by name."""
    names = _node(cfg, key)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"config unlok.{key}: expected a non-empty list of names, got {names!r}")
    params = _node(cfg, f"{key[:-1]}_params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"config unlok.{key[:-1]}_params: expected a mapping of name -> parameters")
    out = {}
    for name in names:
        given = params.get(name) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"config unlok.{key[:-1]}_params.{name}: expected a mapping, got {given!r}")
        out[name] = factory(name, **_tuple_fields(given))
    return out


def _tuple_fields(node: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in node.items()}


def _dataclass_from(cls: type, node: Any, where: str) -> Any:
    node = dict(node or {})
    try:
        return cls(**_tuple_fields(node))
    except TypeError as exc:
        raise ConfigError(f"config {where}: {exc}") from None


def protocol_config(cfg: DictConfig) -> ProtocolConfig:
    u = cfg.unlok
    return ProtocolConfig(seed=int(u.seed), empty_answer=str(u.empty_answer), n_random=int(u.n_random),
                          n_retain=int(u.n_retain), max_new_tokens=int(u.max_new_tokens))


def load_model_by_name(cfg: DictConfig, name: Any, batch_size: int, log: Callable[[str], None]) -> VLMAdapter:
    """A model behind the adapter interface: None = the tiny model (pretrained once, cached), a packaged run
    config name (conf/model), or a directory / hub id."""
    from mmunlearn.models.adapters.base import load_adapter
    from mmunlearn.models.registry import available_run_configs, load_from_run_config

    if name is None:
        from mmunlearn.pretrain.pipeline import pretrain

        return load_adapter(pretrain(cfg, log=log).path, batch_size=batch_size)
    if str(name) in available_run_configs():
        return load_from_run_config(str(name), batch_size=batch_size)
    return load_adapter(str(name), batch_size=batch_size)


def load_model(cfg: DictConfig, log: Callable[[str], None]) -> VLMAdapter:
    return load_model_by_name(cfg, cfg.unlok.model, int(cfg.unlok.batch_size), log)


def load_benchmark(cfg: DictConfig) -> Benchmark:
    u = cfg.unlok
    if u.data is None:
        from mmunlearn.config import world_config
        from mmunlearn.data.world_benchmark import world_benchmark
        from mmunlearn.pretrain.pipeline import build_world

        wcfg = world_config(cfg)
        return world_benchmark(build_world(wcfg).corpus, int(u.n_facts), int(u.seed), wcfg.image_size)
    from mmunlearn.data.unlok_format import read_unlok_json

    bench = read_unlok_json(Path(str(u.data)).expanduser(),
                            None if u.image_root is None else Path(str(u.image_root)).expanduser())
    if u.n_facts is not None:
        bench.records = bench.records[:int(u.n_facts)]
    return bench


def build_components(cfg: DictConfig) -> tuple[dict[str, Defense], dict[str, Attack], EditConfig,
                                               RelearnConfig | None]:
    """Defenses, attacks, the editor's and the relearning attack's settings: all checked before any work."""
    defenses = _named(cfg, "defenses", get_defense)
    attacks = _named(cfg, "attacks", get_attack)
    edit = _dataclass_from(EditConfig, _node(cfg, "edit"), "unlok.edit")
    relearn_node = _node(cfg, "relearning")
    relearn = None if relearn_node is None else _dataclass_from(RelearnConfig, relearn_node, "unlok.relearning")
    return defenses, attacks, edit, relearn


def edit_overrides(cfg: DictConfig, defenses: dict[str, Defense]) -> dict[str, dict[str, Any]]:
    """`unlok.defense_edit.<defense>: {lr, steps}`: per-defense learning rate and steps."""
    node = _node(cfg, "defense_edit") or {}
    out = {}
    for name, given in node.items():
        if name not in defenses:
            continue
        if not isinstance(given, dict) or set(given) - {"lr", "steps"}:
            raise ConfigError(f"config unlok.defense_edit.{name}: only 'lr' and 'steps' may be set, got {given!r}")
        out[name] = {k: (float(v) if k == "lr" else int(v)) for k, v in given.items()}
    return out


def _save_records(out_dir: Path, benchmark: Benchmark) -> None:
    """records.jsonl and every image a record refers to (the report's sample browser reads them)."""
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    refs: dict[str, str] = {}
    rows = []
    for record in benchmark.records:
        data = dataclasses.asdict(record)
        data.pop("meta", None)
        rows.append(data)
        for ref in image_refs(record):
            if ref not in refs:
                name = f"{len(refs):05d}.png"
                benchmark.image(ref).save(images_dir / name)
                refs[ref] = f"images/{name}"
    write_jsonl_atomic(out_dir / "records.jsonl", rows)
    write_json_atomic(out_dir / "images.json", refs)


def image_refs(record: Any) -> list[str]:
    refs = [record.image, *record.paraphrase_images.values()]
    return refs + [n.image for n in record.neighbour_images.values()]


def run_unlok(cfg: DictConfig, out_dir: Path, log: Callable[[str], None] = print) -> UnlokResult:
    """Run (or resume) the experiment in `out_dir` and write its outputs; returns the summary.

    Each group of `unlok.batch_facts` facts is one unit, written atomically when it finishes; a rerun skips
    finished units.
    """
    torch.set_num_threads(int(cfg.threads))
    defenses, attacks, edit_config, relearn_config = build_components(cfg)
    overrides = edit_overrides(cfg, defenses)
    config_dict = OmegaConf.to_container(cfg, resolve=True)
    started, t0 = now(), time.perf_counter()
    resumed = claim(out_dir, config_dict, {"seeds": {"unlok": int(cfg.unlok.seed)}, "started": started,
                                           "versions": package_versions(), "git_sha": git_sha()})
    benchmark = load_benchmark(cfg)
    adapter = load_model(cfg, log)
    config = protocol_config(cfg)
    units = Units(out_dir)
    log(f"unlok: {len(benchmark)} facts, {len(defenses)} defenses, {len(attacks)} attacks"
        f"{' + relearning' if relearn_config else ''} on {adapter.name}{' (resuming)' if resumed else ''}")
    rows: list[dict[str, Any]] = []
    fact_seconds: list[float] = []
    group = max(1, int(cfg.unlok.get("batch_facts", 1) or 1))
    editor_cm = Editor(adapter, edit_config) if group == 1 else BatchedEditor(adapter, edit_config, slots=group)
    with editor_cm as editor:
        relearn = Relearning(adapter, relearn_config, seed=config.seed, max_new_tokens=config.max_new_tokens,
                             router=None if group == 1 else editor.router) if relearn_config else None
        protocol = Protocol(adapter, benchmark, editor if group == 1 else None, defenses, attacks, config, relearn,
                            edit_overrides=overrides, edited_from=lowest_layer(adapter, editor.module_names))
        if relearn_config is not None or "probe" in attacks:
            protocol.prime()
        records = benchmark.records
        with tqdm(total=len(records), desc="unlok facts", unit="fact", disable=None) as bar:
            for start in range(0, len(records), group):
                # One unit per group of facts (a group's results depend on its members, so it is written and
                # skipped as a whole); with groups of one, one unit per fact.
                chunk = records[start:start + group]
                key = chunk[0].id if group == 1 else f"{chunk[0].id}+{len(chunk) - 1}"
                done = units.load(start, key)
                if done is None:
                    t_group = time.perf_counter()
                    if group == 1:
                        results = [protocol.run_fact(chunk[0])]
                    else:
                        with tqdm(total=1 + len(defenses), desc="  model states", unit="state", leave=False,
                                  disable=None) as states:
                            def done_state(phase: str, states: tqdm = states) -> None:
                                states.set_postfix_str(phase)
                                states.update(1)

                            results = protocol.run_group(chunk, editor, progress=done_state)
                    done = {"facts": [r.id for r in chunk], "rows": results,
                            "seconds": time.perf_counter() - t_group}
                    units.save(start, key, done)
                for fact_rows in done["rows"]:
                    rows += fact_rows
                fact_seconds += [float(done["seconds"]) / len(chunk)] * len(chunk)
                bar.update(len(chunk))
        trainable = editor.trainable_count() if group == 1 else sum(p.numel() for p in editor.trainable) // group
        modules = editor.module_names
    attack_names = list(attacks) + (["relearning"] if relearn_config else [])
    summary = summarize(rows, list(defenses), attack_names, {n: d.target for n, d in defenses.items()},
                        seed=config.seed)
    summary["model"] = adapter.name
    summary["edit"] = {"trainable_parameters": trainable, "modules": modules}
    timings = {"protocol_seconds": sum(fact_seconds), "per_fact_seconds": sum(fact_seconds) / max(1, len(fact_seconds)),
               "wall_seconds_this_call": time.perf_counter() - t0}
    write_jsonl_atomic(out_dir / "samples.jsonl", rows)
    _save_records(out_dir, benchmark)
    write_json_atomic(out_dir / "summary.json", summary)
    write_json_atomic(out_dir / "timings.json", timings)
    (out_dir / "report.md").write_text(report_markdown(summary, timings), encoding="utf-8")
    finish_manifest(out_dir, finished=now(), model_fingerprint=model_fingerprint(adapter.name),
                    data_fingerprint=data_fingerprint(benchmark.records))
    return UnlokResult(out_dir, summary, time.perf_counter() - t0)


def report_markdown(summary: dict[str, Any], timings: dict[str, Any]) -> str:
    t = summary["tables"]
    return "\n".join([
        f"# UnLOK-VQA on {summary['model']}", "",
        f"{summary['n_facts']} facts; protocol {timings['protocol_seconds']:.0f} s "
        f"({timings['per_fact_seconds']:.2f} s per fact); "
        f"edited parameters: {summary['edit']['trainable_parameters']} in {', '.join(summary['edit']['modules'])}.",
        "", "## Attack success (mean over facts, 95% bootstrap CI); `none` = before any edit", "",
        t["attack_success"], "", t["budgets"], "",
        "## Edit efficacy and side effects (dAcc = accuracy before - after; positive = knowledge lost)", "",
        t["effects"], "", "## The two questions", "", t["questions"], ""])
