"""`mmunlearn unlok run`: the UnLOK-VQA experiment end to end, from config to tables.

Loads the model (the cached tiny model by default) and the benchmark (the embedded world's by default),
runs the per-fact protocol for every configured defense and attack, and writes into the output directory:
`manifest.json`, `samples.jsonl` (every measure and attack row), `summary.json` (every estimate with its
95% bootstrap CI) and `report.md` (the defense x attack table, the side-effect table, the two questions).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from mmunlearn.attacks.registry import Attack, get_attack
from mmunlearn.attacks.relearning import RelearnConfig, Relearning
from mmunlearn.config_checks import at_least, check_known, check_values
from mmunlearn.data.records import Benchmark
from mmunlearn.defenses.batched_editor import BatchedEditor
from mmunlearn.defenses.editor import EditConfig, Editor
from mmunlearn.defenses.losses import Defense, get_defense
from mmunlearn.errors import ConfigError, DataError, MMUnlearnError
from mmunlearn.experiments.unlok_protocol import Protocol, ProtocolConfig
from mmunlearn.experiments.unlok_summary import summarize
from mmunlearn.models.adapters.base import VLMAdapter
from mmunlearn.models.layer_spec import resolve_layers
from mmunlearn.runner.manifest import now, write_json_atomic
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


@dataclass
class UnlokResult:
    out_dir: Path
    summary: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class RunKeys:
    """The `unlok` section's own keys besides the protocol's (`ProtocolConfig`) and the components': what each
    takes, checked before any work."""

    data: str | None = None
    image_root: str | None = None
    model: str | None = None
    n_facts: int | None = field(default=None, metadata=at_least(1))
    batch_size: int = field(default=256, metadata=at_least(1))
    batch_facts: int | None = field(default=None, metadata=at_least(1))
    workers: int | str = "auto"
    defenses: list[str] = field(default_factory=list)
    attacks: list[str] = field(default_factory=list)
    defense_edit: dict[str, Any] | None = None
    defense_params: dict[str, Any] | None = None
    attack_params: dict[str, Any] | None = None
    relearning: dict[str, Any] | None = None


def unlok_keys() -> list[str]:
    """The keys the `unlok` section may hold (`edit` is checked by `EditConfig`)."""
    return [*(f.name for cls in (RunKeys, ProtocolConfig) for f in dataclasses.fields(cls)), "edit"]


def check_keys(cfg: DictConfig) -> None:
    """Every key of the `unlok` section that is read as a number, a name or a list has the right kind of value."""
    node = OmegaConf.to_container(cfg.unlok, resolve=True)  # its key names: `load_config`
    check_values(RunKeys, node, "unlok")
    check_values(ProtocolConfig, node, "unlok")


def _node(cfg: DictConfig, key: str) -> Any:
    value = cfg.unlok.get(key)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


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
        out[name] = factory(name, **tuple_fields(given))
    return out


def tuple_fields(node: dict[str, Any]) -> dict[str, Any]:
    """YAML lists as the tuples the settings' and components' fields hold."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in node.items()}


def _dataclass_from(cls: type, node: Any, where: str) -> Any:
    if node is not None and not isinstance(node, dict):
        raise ConfigError(f"config {where}: expected a mapping, got {node!r}")
    node = dict(node or {})
    check_known(node, [f.name for f in dataclasses.fields(cls) if f.init], where)
    check_values(cls, node, where)
    try:
        return cls(**tuple_fields(node))
    except TypeError as exc:
        raise ConfigError(f"config {where}: {exc}") from None


def protocol_config(cfg: DictConfig) -> ProtocolConfig:
    u = cfg.unlok
    return ProtocolConfig(seed=u.seed, empty_answer=u.empty_answer, n_random=u.n_random, n_retain=u.n_retain,
                          max_new_tokens=u.max_new_tokens)


def load_model_by_name(cfg: DictConfig, name: Any, batch_size: int, log: Callable[[str], None]) -> VLMAdapter:
    """A model behind the adapter interface: None = the tiny model (pretrained once, cached), a packaged run
    config name (conf/model, placed by its own device_map), or a directory / hub id; the last two and the
    tiny model run on `device`."""
    from mmunlearn.config import configured_device
    from mmunlearn.models.adapters.base import load_adapter
    from mmunlearn.models.registry import available_run_configs, load_from_run_config

    device = configured_device(cfg)
    device_map = None if device.type == "cpu" else {"": str(device)}
    if name is None:
        from mmunlearn.pretrain.pipeline import pretrain

        return load_adapter(pretrain(cfg, log=log).path, batch_size=batch_size, device_map=device_map)
    if str(name) in available_run_configs():
        return load_from_run_config(str(name), batch_size=batch_size)
    return load_adapter(str(name), batch_size=batch_size, device_map=device_map)


def load_model(cfg: DictConfig, log: Callable[[str], None]) -> VLMAdapter:
    return load_model_by_name(cfg, cfg.unlok.model, cfg.unlok.batch_size, log)


def load_benchmark(cfg: DictConfig) -> Benchmark:
    u = cfg.unlok
    if u.data is None:
        from mmunlearn.config import world_config
        from mmunlearn.data.world_benchmark import world_benchmark
        from mmunlearn.pretrain.pipeline import build_world

        wcfg = world_config(cfg)
        return world_benchmark(build_world(wcfg).corpus, u.n_facts, u.seed, wcfg.image_size)
    from mmunlearn.data.unlok_format import read_unlok_json

    path = Path(str(u.data)).expanduser()
    bench = read_unlok_json(path, None if u.image_root is None else Path(str(u.image_root)).expanduser())
    if not bench.records:
        raise DataError(f"{path}: no records to edit")
    if u.n_facts is not None:
        bench.records = bench.records[:u.n_facts]
    return bench


def build_components(cfg: DictConfig) -> tuple[dict[str, Defense], dict[str, Attack], EditConfig,
                                               RelearnConfig | None]:
    """Defenses, attacks, the editor's and the relearning attack's settings: all checked before any work."""
    check_keys(cfg)
    defenses = _named(cfg, "defenses", get_defense)
    attacks = _named(cfg, "attacks", get_attack)
    edit = _dataclass_from(EditConfig, _node(cfg, "edit"), "unlok.edit")
    relearn_node = _node(cfg, "relearning")
    relearn = None if relearn_node is None else _dataclass_from(RelearnConfig, relearn_node, "unlok.relearning")
    check_embedded_layers(cfg, attacks, edit)
    return defenses, attacks, edit, relearn


def check_embedded_layers(cfg: DictConfig, attacks: dict[str, Attack], edit: EditConfig) -> None:
    """Attacks' and the edit's layers against the embedded tiny model's layer count, known from the config: a
    layer list it cannot hold is a one-line error before pretraining and loading, not inside a worker later. A
    named model (or smol, whose language model sets the count) is checked when it is loaded."""
    if cfg.unlok.get("model") is not None or cfg.model.get("kind", "tiny") != "tiny":
        return
    n_layers = int(cfg.model.text_layers)
    for attack in attacks.values():
        attack.check_model(n_layers)
    resolve_layers(edit.layers, n_layers, what="unlok.edit.layers")


def edit_overrides(cfg: DictConfig, defenses: dict[str, Defense]) -> dict[str, dict[str, Any]]:
    """`unlok.defense_edit.<defense>: {lr, steps}`: per-defense learning rate and steps."""
    node = _node(cfg, "defense_edit") or {}
    out = {}
    for name, given in node.items():
        if name not in defenses:
            continue
        if not isinstance(given, dict) or set(given) - {"lr", "steps"}:
            raise ConfigError(f"config unlok.defense_edit.{name}: only 'lr' and 'steps' may be set, got {given!r}")
        check_values(EditConfig, given, f"unlok.defense_edit.{name}")
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


class GroupRunner:
    """One process's editor, relearning attacker and protocol: runs units (groups of facts) and saves them.

    The probe states of the unedited model are computed before the first unit (`Protocol.prime`), so a unit's
    result depends only on its facts, whichever process runs it and whatever ran before.
    """

    def __init__(self, cfg: DictConfig, benchmark: Benchmark, adapter: VLMAdapter, show_states: bool = True) -> None:
        self.benchmark = benchmark
        self.adapter = adapter
        self.show_states = show_states
        self.defenses, self.attacks, edit_config, self.relearn_config = build_components(cfg)
        self.overrides = edit_overrides(cfg, self.defenses)
        self.config = protocol_config(cfg)
        self.group = group_size(cfg)
        self.editor = Editor(adapter, edit_config) if self.group == 1 else \
            BatchedEditor(adapter, edit_config, slots=self.group)
        self.protocol: Protocol | None = None
        self._primed = False

    def __enter__(self) -> GroupRunner:
        editor = self.editor.__enter__()
        routed = self.group > 1
        relearn = Relearning(self.adapter, self.relearn_config, seed=self.config.seed,
                             max_new_tokens=self.config.max_new_tokens,
                             router=editor.router if routed else None) if self.relearn_config else None
        self.protocol = Protocol(self.adapter, self.benchmark, None if routed else editor, self.defenses,
                                 self.attacks, self.config, relearn, edit_overrides=self.overrides,
                                 edited_modules=editor.module_names)
        return self

    def __exit__(self, *exc: object) -> None:
        self.editor.__exit__(*exc)

    @property
    def trainable(self) -> int:
        e = self.editor
        return e.trainable_count() if isinstance(e, Editor) else sum(p.numel() for p in e.trainable) // self.group

    @property
    def modules(self) -> list[str]:
        return list(self.editor.module_names)

    def run_unit(self, start: int, units: Units) -> dict[str, Any]:
        """Run the group of facts starting at record `start` and save it as a unit."""
        assert self.protocol is not None, "use GroupRunner as a context manager"
        protocol = self.protocol
        if not self._primed and (protocol.relearn is not None or "probe" in self.attacks):
            protocol.prime()
        self._primed = True
        chunk = self.benchmark.records[start:start + self.group]
        t_group = time.perf_counter()
        if self.group == 1:
            results = [protocol.run_fact(chunk[0])]
        else:
            with tqdm(total=1 + len(self.defenses), desc="  model states", unit="state", leave=False,
                      disable=None if self.show_states else True) as states:
                def done_state(phase: str, states: tqdm = states) -> None:
                    states.set_postfix_str(phase)
                    states.update(1)

                results = protocol.run_group(chunk, self.editor, progress=done_state)  # type: ignore[arg-type]
        done = {"facts": [r.id for r in chunk], "rows": results, "seconds": time.perf_counter() - t_group,
                "threads": torch.get_num_threads()}
        units.save(start, unit_key(chunk, self.group), done)
        return done


def group_size(cfg: DictConfig) -> int:
    return max(1, int(cfg.unlok.get("batch_facts", 1) or 1))


def unit_key(chunk: Sequence[Any], group: int) -> str:
    """A group's results depend on its members, so a unit is keyed by them (with groups of one, by the fact)."""
    return chunk[0].id if group == 1 else f"{chunk[0].id}+{len(chunk) - 1}"


def _pending(benchmark: Benchmark, units: Units, group: int) -> list[int]:
    records = benchmark.records
    return [s for s in range(0, len(records), group) if units.load(s, unit_key(records[s:s + group], group)) is None]


def pending_groups(cfg: DictConfig, out_dir: Path) -> list[int]:
    """Claim `out_dir` and return the first record of each group of facts not finished in it."""
    build_components(cfg)
    benchmark = load_benchmark(cfg)
    claim(out_dir, *track_manifest(cfg, "unlok"))
    return _pending(benchmark, Units(out_dir), group_size(cfg))


def run_unlok(cfg: DictConfig, out_dir: Path, log: Callable[[str], None] = print) -> UnlokResult:
    """Run (or resume) the experiment in `out_dir` and write its outputs; returns the summary.

    Each group of `unlok.batch_facts` facts is one unit, written atomically when it finishes; a rerun skips
    finished units. With `unlok.workers` > 1 the pending units are shared among that many processes.
    """
    from mmunlearn.config import configured_device
    from mmunlearn.experiments.workers import configured_workers, run_in_workers

    torch.set_num_threads(int(cfg.threads))
    build_components(cfg)  # every component, the device and the worker count checked before any work
    configured_device(cfg)
    workers = configured_workers(cfg)
    t0 = time.perf_counter()
    benchmark = load_benchmark(cfg)  # a bad data file fails before the run directory is claimed
    records = benchmark.records
    group = group_size(cfg)
    starts = list(range(0, len(records), group))
    with claimed(out_dir, *track_manifest(cfg, "unlok")) as resumed, \
            GroupRunner(cfg, benchmark, load_model(cfg, log)) as runner:  # a failed start withdraws the claim
        adapter, units = runner.adapter, Units(out_dir)
        pending = _pending(benchmark, units, group)
        workers = min(workers, max(1, len(pending)))
        log(f"unlok: {len(benchmark)} facts, {len(runner.defenses)} defenses, {len(runner.attacks)} attacks"
            f"{' + relearning' if runner.relearn_config else ''} on {adapter.name}"
            f"{f', {workers} worker processes' if workers > 1 else ''}{' (resuming)' if resumed else ''}")
        with tqdm(total=len(records), desc="unlok facts", unit="fact", disable=None) as bar:
            bar.update(len(records) - sum(len(records[s:s + group]) for s in pending))
            if workers > 1:
                run_in_workers(cfg, {"unlok": out_dir}, [("unlok", s) for s in pending], workers,
                               on_unit=lambda _track, s: bar.update(len(records[s:s + group])))
            else:
                for start in pending:
                    runner.run_unit(start, units)
                    bar.update(len(records[start:start + group]))
        trainable, modules = runner.trainable, runner.modules
    rows: list[dict[str, Any]] = []
    fact_seconds: list[float] = []
    for start in starts:
        chunk = records[start:start + group]
        done = units.load(start, unit_key(chunk, group))
        if done is None:
            raise MMUnlearnError(f"{units.path(start, unit_key(chunk, group))}: unit missing after the run")
        for fact_rows in done["rows"]:
            rows += fact_rows
        fact_seconds += [float(done["seconds"]) / len(chunk)] * len(chunk)
    defenses, attacks = runner.defenses, runner.attacks
    attack_names = list(attacks) + (["relearning"] if runner.relearn_config else [])
    summary = summarize(rows, list(defenses), attack_names, {n: d.target for n, d in defenses.items()},
                        seed=int(cfg.unlok.seed))
    summary["model"] = adapter.name
    summary["edit"] = {"trainable_parameters": trainable, "modules": modules}
    timings = {"protocol_seconds": sum(fact_seconds), "per_fact_seconds": sum(fact_seconds) / max(1, len(fact_seconds)),
               "wall_seconds_this_call": time.perf_counter() - t0, "workers": workers}
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
