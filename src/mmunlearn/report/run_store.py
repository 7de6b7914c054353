"""Read a finished run directory: manifest, the UnLOK and safety tracks, their rows, records and images.

Everything the report shows goes through `RunStore`, so a missing or corrupt file fails once, here, with a
one-line `DataError` naming the file (and line and field), never deep inside a plot. A run of one track
only is normal: the absent track reads as `None`. Image references that cannot be resolved do not stop
the report; they are collected in `RunStore.warnings` and shown there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from mmunlearn.errors import DataError
from mmunlearn.metrics.bootstrap import Estimate

TRACKS = ("unlok", "safety")
BEFORE = "none"  # the UnLOK "defense" of the unedited model

# Fields each row type must carry: checked on load, so later code may index them directly.
_UNLOK_FIELDS = {"measure": ("fact", "defense", "answers", "correct"),
                 "attack": ("fact", "defense", "attack", "success")}
_SAFETY_FIELDS = {"attack": ("run", "suite", "prompt", "response", "verdicts"),
                  "utility": ("run", "measure", "correct")}


def read_json(path: Path) -> Any:
    """A JSON file's content; DataError naming the file if it is missing or not valid JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per non-blank line; DataError naming the file and line of the first bad one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: invalid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _check_rows(path: Path, rows: Sequence[dict[str, Any]], fields: dict[str, tuple[str, ...]]) -> None:
    for number, row in enumerate(rows, start=1):
        kind = row.get("type")
        if kind not in fields:
            raise DataError(f"{path}: row {number}: field 'type' is {kind!r}, expected one of {sorted(fields)}")
        missing = [name for name in fields[kind] if name not in row]
        if missing:
            raise DataError(f"{path}: row {number} ({kind}): missing field {missing[0]!r}")


def _mapping(path: Path, data: Any, what: str = "a JSON object") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected {what}, got {type(data).__name__}")
    return data


def estimate(data: Any, where: str) -> Estimate:
    """An `Estimate` from a {mean, low, high, n} dict (None means NaN); DataError naming `where` if malformed."""
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected an estimate {{mean, low, high, n}}, got {type(data).__name__}")
    try:
        return Estimate.from_json(data)
    except KeyError as exc:
        raise DataError(f"{where}: estimate lacks field {exc.args[0]!r}") from None
    except (TypeError, ValueError):
        raise DataError(f"{where}: estimate fields must be numbers or null, got {data!r}") from None


def first_seen(values: Sequence[Any]) -> list[Any]:
    """Distinct values in order of first appearance (the order the runner produced them in)."""
    return list(dict.fromkeys(values))


@dataclass
class Track:
    """One track's directory: summary, sample rows and the image refs it may resolve."""

    name: str
    root: Path
    summary: dict[str, Any]
    samples: list[dict[str, Any]]
    images: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    def image_path(self, ref: str | None) -> Path | None:
        """The image file of `ref`, or None (with a warning, once) if it is not in images.json or not on disk."""
        if not ref:
            return None
        rel = self.images.get(ref)
        path = (self.root / rel).resolve() if rel else None
        if path is not None and not path.is_relative_to(self.root.resolve()):
            path, rel = None, f"{rel}, outside {self.root}"
        if path is None or not path.is_file():
            note = f"{self.name}: image {ref!r} " + ("not in images.json" if rel is None else f"missing ({rel})")
            if note not in self.warnings:
                self.warnings.append(note)
            return None
        return path


@dataclass
class UnlokTrack(Track):
    """The UnLOK-VQA track plus its fact records (by id, in file order)."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def measures(self) -> list[dict[str, Any]]:
        return [r for r in self.samples if r["type"] == "measure"]

    def attacks(self) -> list[dict[str, Any]]:
        return [r for r in self.samples if r["type"] == "attack"]

    @property
    def defenses(self) -> list[str]:
        """`none` first, then the defenses in the order the rows list them."""
        seen = first_seen(r["defense"] for r in self.samples)
        return ([BEFORE] if BEFORE in seen else []) + [d for d in seen if d != BEFORE]

    @property
    def attack_names(self) -> list[str]:
        return first_seen(r["attack"] for r in self.attacks())

    @property
    def facts(self) -> list[str]:
        """Fact ids in record order, then any only the rows mention."""
        return first_seen([*self.records, *(r["fact"] for r in self.samples)])

    def attack_success(self) -> dict[tuple[str, str], Estimate]:
        """(defense, attack) -> estimate, as the runner summarised it."""
        return {(e["defense"], e["attack"]): estimate(e, f"{self.root / 'summary.json'}: attack_success")
                for e in self._list("attack_success", ("defense", "attack"))}

    def effects(self) -> dict[tuple[str, str], Estimate]:
        """(defense, metric) -> estimate, as the runner summarised it."""
        return {(e["defense"], e["metric"]): estimate(e, f"{self.root / 'summary.json'}: effects")
                for e in self._list("effects", ("defense", "metric"))}

    def _list(self, key: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
        items = self.summary[key]
        where = f"{self.root / 'summary.json'}: field {key!r}"
        if not isinstance(items, list):
            raise DataError(f"{where}: expected a list, got {type(items).__name__}")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or any(f not in item for f in fields):
                raise DataError(f"{where}[{i}]: expected an object with {', '.join(fields)}")
        return items


@dataclass
class SafetyTrack(Track):
    """The safety track: attack and utility rows of every run, and of its checkpoints (`safety.eval_steps`)."""

    checkpoint_samples: list[dict[str, Any]] = field(default_factory=list)  # rows of checkpoints.jsonl, with "step"

    def attacks(self) -> list[dict[str, Any]]:
        return [r for r in self.samples if r["type"] == "attack"]

    def checkpoint_rows(self, kind: str) -> list[dict[str, Any]]:
        """Rows of `kind` ("attack" or "utility") evaluated after a training step (`safety.eval_steps`) before the
        run's last step, in the order the runner wrote them. A run that early stopping ended at a checkpoint has
        that step's rows in `samples.jsonl` already, as its final ones (the summary counts them once too)."""
        last = {run: c.get("steps") for run, c in self.compute().items()}
        return [r for r in self.checkpoint_samples
                if r["type"] == kind and not (isinstance(last.get(r["run"]), int) and r["step"] >= last[r["run"]])]

    def checkpoint_attacks(self) -> list[dict[str, Any]]:
        return self.checkpoint_rows("attack")

    def utility(self) -> list[dict[str, Any]]:
        return [r for r in self.samples if r["type"] == "utility"]

    @property
    def runs(self) -> list[str]:
        return first_seen(r["run"] for r in self.samples)

    @property
    def suites(self) -> list[str]:
        return first_seen(r["suite"] for r in self.attacks())

    @property
    def judges(self) -> list[str]:
        asr = self.summary.get("asr")
        names = list(asr) if isinstance(asr, dict) else []
        return first_seen([*names, *(j for r in self.attacks() for j in r["verdicts"])])

    def asr(self) -> dict[tuple[str, str, str], Estimate]:
        """(judge, run, suite) -> ASR estimate, as the runner summarised it."""
        where = f"{self.root / 'summary.json'}: field 'asr'"
        asr = self.summary["asr"]
        if not isinstance(asr, dict):
            raise DataError(f"{where}: expected an object keyed by judge, got {type(asr).__name__}")
        out = {}
        for judge, items in asr.items():
            for i, e in enumerate(items if isinstance(items, list) else [None]):
                if not isinstance(e, dict) or "run" not in e or "suite" not in e:
                    raise DataError(f"{where}[{judge!r}][{i}]: expected an object with run, suite and an estimate")
                out[(judge, e["run"], e["suite"])] = estimate(e, f"{where}[{judge!r}][{i}]")
        return out

    def utility_estimates(self) -> dict[tuple[str, str], Estimate]:
        """(run, measure) -> estimate, as the runner summarised it."""
        where = f"{self.root / 'summary.json'}: field 'utility'"
        items = self.summary["utility"]
        out = {}
        for i, e in enumerate(items if isinstance(items, list) else [None]):
            if not isinstance(e, dict) or "run" not in e or "measure" not in e:
                raise DataError(f"{where}[{i}]: expected an object with run, measure and an estimate")
            out[(e["run"], e["measure"])] = estimate(e, f"{where}[{i}]")
        return out

    def checkpoints(self) -> tuple[dict[tuple[str, str, int, str], Estimate], dict[tuple[str, int, str], Estimate]]:
        """The runs over training (`safety.eval_steps`), as the runner summarised them: (judge, run, step, suite)
        -> ASR and (run, step, measure) -> utility; both empty for a run without checkpoints."""
        section = self.summary.get("checkpoints")
        if section is None:
            return {}, {}
        where = f"{self.root / 'summary.json'}: field 'checkpoints'"
        if not isinstance(section, dict) or not isinstance(section.get("asr"), dict) \
                or not isinstance(section.get("utility"), list):
            raise DataError(f"{where}: expected an object with 'asr' (by judge) and 'utility' lists")

        def item(e: Any, at: str, keys: tuple[str, ...]) -> tuple[tuple[Any, ...], Estimate]:
            if not isinstance(e, dict) or any(k not in e for k in keys) or not isinstance(e["step"], int):
                raise DataError(f"{at}: expected an object with {', '.join(keys)} (an integer step) and an estimate")
            return tuple(e[k] for k in keys), estimate(e, at)

        asr = {}
        for judge, items in section["asr"].items():
            for i, e in enumerate(items if isinstance(items, list) else [None]):
                key, est = item(e, f"{where}['asr'][{judge!r}][{i}]", ("run", "step", "suite"))
                asr[(judge, *key)] = est
        utility = dict(item(e, f"{where}['utility'][{i}]", ("run", "step", "measure"))
                       for i, e in enumerate(section["utility"]))
        return asr, utility  # type: ignore[return-value]

    def checkpoint_compute(self) -> list[dict[str, Any]]:
        """Training cost up to each evaluated step (`safety.eval_steps`): run, step, tokens and FLOPs so far."""
        section = self.summary.get("checkpoints")
        items = section.get("compute", []) if isinstance(section, dict) else []
        where = f"{self.root / 'summary.json'}: field 'checkpoints'['compute']"
        keys = ("run", "step", "text_tokens", "image_tokens", "flops")
        for i, c in enumerate(items if isinstance(items, list) else [None]):
            if not isinstance(c, dict) or any(not isinstance(c.get(k), (str if k == "run" else (int, float)))
                                              for k in keys):
                raise DataError(f"{where}[{i}]: expected an object with {', '.join(keys)}")
        return items

    def early_stop(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
        """`safety.early_stop`'s rule and, per trained run, its checks and stopping step; None when it was off."""
        early = self.summary.get("early_stop")
        if early is None:
            return None
        rule, runs = (early.get("rule"), early.get("runs")) if isinstance(early, dict) else (None, None)
        if not isinstance(rule, dict) or not isinstance(runs, dict) or not all(
                isinstance(r, dict) and isinstance(r.get("checks"), list) for r in runs.values()):
            raise DataError(f"{self.root / 'summary.json'}: field 'early_stop': expected an object with 'rule' and "
                            f"'runs' (each with its 'checks')")
        return rule, runs

    def in_run_order(self, names: Sequence[str]) -> list[str]:
        """`names` in the order the runs were configured (`summary.json` sorts its keys); unknown names last."""
        return sorted(names, key=lambda n: self.runs.index(n) if n in self.runs else len(self.runs))

    def compute(self) -> dict[str, dict[str, Any]]:
        compute = self.summary["compute"]
        if not isinstance(compute, dict) or not all(isinstance(v, dict) for v in compute.values()):
            raise DataError(f"{self.root / 'summary.json'}: field 'compute': expected an object of objects per run")
        return compute


def _images(root: Path) -> dict[str, str]:
    path = root / "images.json"
    if not path.exists():
        return {}
    images = _mapping(path, read_json(path), "an object mapping image ref -> file")
    bad = next((k for k, v in images.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise DataError(f"{path}: field {bad!r}: expected a file path string, got {images[bad]!r}")
    return images


def _check_finished(root: Path) -> None:
    """A track the runner has not finished (units written, no summary yet) is named as such, not as corrupt."""
    units = root / "units"
    if not (root / "summary.json").exists() and units.is_dir():
        count = sum(1 for _ in units.glob("*.json"))
        raise DataError(f"{root}: track not finished ({count} units written, no summary.json); "
                        "resume the run before building its report")


def _summary(root: Path, fields: tuple[str, ...]) -> dict[str, Any]:
    """The track's summary, with every field the report reads (a summary without them is not the runner's)."""
    path = root / "summary.json"
    summary = _mapping(path, read_json(path))
    missing = next((f for f in fields if f not in summary), None)
    if missing is not None:
        raise DataError(f"{path}: field {missing!r} missing; rerun the track to rewrite its summary")
    return summary


def _load_unlok(root: Path) -> UnlokTrack:
    _check_finished(root)
    summary = _summary(root, ("attack_success", "effects"))
    samples = read_jsonl(root / "samples.jsonl")
    _check_rows(root / "samples.jsonl", samples, _UNLOK_FIELDS)
    records: dict[str, dict[str, Any]] = {}
    warnings = []
    path = root / "records.jsonl"
    if path.exists():
        for number, record in enumerate(read_jsonl(path), start=1):
            if "id" not in record:
                raise DataError(f"{path}: row {number}: missing field 'id'")
            records[str(record["id"])] = record
    else:
        warnings.append(f"unlok: {path.name} absent, so the sample browser shows no images or questions")
    return UnlokTrack("unlok", root, summary, samples, _images(root), warnings, records)


def _load_safety(root: Path) -> SafetyTrack:
    _check_finished(root)
    summary = _summary(root, ("asr", "utility", "compute"))
    samples = read_jsonl(root / "samples.jsonl")
    _check_rows(root / "samples.jsonl", samples, _SAFETY_FIELDS)
    path = root / "checkpoints.jsonl"
    checkpoints = read_jsonl(path) if path.exists() else []
    _check_rows(path, checkpoints, _SAFETY_FIELDS)
    bad = next((n for n, r in enumerate(checkpoints, start=1)
                if isinstance(r.get("step"), bool) or not isinstance(r.get("step"), int)), None)
    if bad is not None:
        step = checkpoints[bad - 1].get("step")
        raise DataError(f"{path}: row {bad}: field 'step' must be a whole number, got {step!r}")
    return SafetyTrack("safety", root, summary, samples, _images(root), checkpoint_samples=checkpoints)


class RunStore:
    """A run directory, read once: `manifest`, `unlok` and `safety` (None when that track is absent)."""

    def __init__(self, run_dir: Path | str) -> None:
        self.root = Path(run_dir)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: run directory not found")
        self.manifest = _mapping(self.root / "manifest.json", read_json(self.root / "manifest.json"))
        self.unlok = _load_unlok(self.root / "unlok") if (self.root / "unlok").is_dir() else None
        self.safety = _load_safety(self.root / "safety") if (self.root / "safety").is_dir() else None
        if self.unlok is None and self.safety is None:
            raise DataError(f"{self.root}: neither an unlok/ nor a safety/ track directory; is this a run directory?")

    @property
    def tracks(self) -> list[Track]:
        return [t for t in (self.unlok, self.safety) if t is not None]

    @property
    def warnings(self) -> list[str]:
        return [w for t in self.tracks for w in t.warnings]

    @cached_property
    def model(self) -> str:
        """The model name(s) the tracks report, or the manifest's config's if they do not."""
        names = first_seen([str(t.summary["model"]) for t in self.tracks if t.summary.get("model")])
        if names:
            return ", ".join(names)
        config = self.manifest.get("config")
        model = config.get("model") if isinstance(config, dict) else None
        return str(model.get("name", "")) if isinstance(model, dict) else str(model or "")

    def track_manifest(self, track: Track) -> dict[str, Any]:
        """The track's own manifest.json (the runner writes one per track with its seeds), or {}."""
        path = track.root / "manifest.json"
        return _mapping(path, read_json(path)) if path.is_file() else {}

    def describe(self) -> dict[str, Any]:
        """Provenance for headers: where, when, which code, model and seeds (the tracks' seeds merged in)."""
        m = self.manifest
        seeds = dict(m["seeds"]) if isinstance(m.get("seeds"), dict) else {}
        for track in self.tracks:
            track_seeds = self.track_manifest(track).get("seeds")
            seeds.update(track_seeds if isinstance(track_seeds, dict) else {})
        return {"path": str(self.root), "model": self.model, "git_sha": m.get("git_sha"),
                "started": m.get("started"), "finished": m.get("finished"), "seeds": seeds,
                "versions": m["versions"] if isinstance(m.get("versions"), dict) else {}}


def as_float(value: Any) -> float:
    """A JSON number or boolean as float; None (and anything else) as NaN."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return math.nan
