"""A run directory that survives being killed: units of work written atomically, resumed by skipping them.

Layout of one track (`RUN_DIR/<track>/`): `units/<key>.json` (one finished unit each, written with a temp file
and a rename, so a unit is either complete or absent), then, once every unit is there, `samples.jsonl`,
`summary.json` (deterministic: no timings, so the same seed and config give the same bytes) and
`timings.json` (wall times and memory, which vary run to run). `RUN_DIR/manifest.json` holds the resolved
config and its hash; a directory holding another config is refused rather than mixed. A fresh claim whose run
fails before any unit is finished (a model that does not load, a worker that dies at once) is withdrawn, so a
failed start leaves nothing that refuses the next config; one whose process was killed outright before its
first unit is taken over by the next claim on the same host (`abandoned`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mmunlearn.errors import ConfigError
from mmunlearn.runner.manifest import atomic_file, git_sha, now, package_versions, write_json_atomic

MANIFEST = "manifest.json"
UNITS = "units"


def config_hash(config: dict[str, Any]) -> str:
    """A stable hash of the parts of a config that change results (paths and thread counts do not)."""
    relevant = {k: v for k, v in config.items() if k not in ("paths", "threads")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_writable(path: Path, what: str = "output directory") -> None:
    """Fail in one line, before any work, when the directory `path` cannot be created or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{what} {path} is not writable ({exc.strerror or exc})") from None


def claim(run_dir: Path, config: dict[str, Any], extra: dict[str, Any]) -> bool:
    """Create or resume `run_dir` for `config`; True when resuming. Another config's directory is an error,
    unless its run was abandoned: no unit finished, and the process that claimed it on this host is gone (killed
    before its first unit, where `claimed` could not withdraw the claim)."""
    check_writable(run_dir)
    digest = config_hash(config)
    manifest_path = run_dir / MANIFEST
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ConfigError(f"{manifest_path}: unreadable manifest; remove the directory or pick another --out") \
                from None
        if old.get("config_hash") == digest:
            if old.get("owner") != _owner():  # the resuming process owns it now, so it is not taken for abandoned
                write_json_atomic(manifest_path, {**old, "owner": _owner()})
            return True
        if not abandoned(run_dir, old):
            raise ConfigError(f"{run_dir} holds a run of another config (hash {old.get('config_hash')} vs {digest}); "
                              "pick another --out or remove it")
    write_json_atomic(manifest_path, {"config": config, "config_hash": digest, **extra, "owner": _owner()})
    return False


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def abandoned(run_dir: Path, manifest: dict[str, Any]) -> bool:
    """True when the claim `manifest` of `run_dir` holds no finished unit and its process, on this host, is gone.
    A claim from another host, or one without an owner, is never taken for abandoned."""
    owner = manifest.get("owner") if isinstance(manifest.get("owner"), dict) else {}
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or _finished_units(run_dir):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists (another user's process, say)
        return False
    return False


def _levels(run_dir: Path) -> list[Path]:
    """`run_dir` and its tracks' folders one level down: where a claim's manifests and units live."""
    return [run_dir, *(p for p in sorted(run_dir.iterdir()) if p.is_dir())] if run_dir.is_dir() else []


def _finished_units(run_dir: Path) -> bool:
    return any(any((level / UNITS).glob("*.json")) for level in _levels(run_dir))


def track_manifest(cfg: Any, track: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The resolved config and the other fields a track's manifest records when it claims a directory."""
    return (OmegaConf.to_container(cfg, resolve=True),  # type: ignore[return-value]
            {"seeds": {track: int(cfg[track].seed)}, "started": now(), "versions": package_versions(),
             "git_sha": git_sha()})


@contextmanager
def claimed(run_dir: Path, config: dict[str, Any], extra: dict[str, Any]) -> Iterator[bool]:
    """`claim` around a run's work (yields True when resuming): a fresh claim whose work fails before any unit
    is finished is withdrawn, so a model that does not load leaves no directory that refuses the next config.

    Only this package's manifests and the folders the claim made, left empty, are removed; a finished unit (this
    call's or a worker's) keeps the whole directory, so the next call resumes it. A resumed claim is never withdrawn.
    """
    created = not run_dir.exists()
    resumed = claim(run_dir, config, extra)
    try:
        yield resumed
    except BaseException:
        if not resumed:
            withdraw(run_dir, remove_dir=created)
        raise


def withdraw(run_dir: Path, remove_dir: bool = False) -> bool:
    """Remove the manifests of a claim that holds no finished unit, and the folders they leave empty; True when
    withdrawn. `run_dir` itself goes only with `remove_dir` (the claim made it; else it is the user's own).

    A claim spans `run_dir` and its tracks' folders one level down (`run_dir/<track>/units/...`), and nothing
    deeper is looked at, so an `--out` that holds other runs further down is safe."""
    levels = _levels(run_dir)
    if not levels or _finished_units(run_dir):
        return False
    for level in reversed(levels):  # the tracks' folders first, so `run_dir` is empty when its turn comes
        manifest = level / MANIFEST
        try:
            ours = "config_hash" in json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            ours = False
        if ours:
            manifest.unlink()
        if not (remove_dir if level == run_dir else ours):
            continue
        for folder in (level / UNITS, level):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    return True


def finish_manifest(run_dir: Path, **fields: Any) -> None:
    path = run_dir / MANIFEST
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(fields)
    write_json_atomic(path, data)


def unit_name(index: int, key: str) -> str:
    """A unit's file name: its position (so files sort in work order) and a readable, safe key."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:60]
    return f"{index:05d}-{safe}.json"


class Units:
    """Finished units of one track, read back on resume."""

    def __init__(self, track_dir: Path) -> None:
        self.dir = track_dir / UNITS
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, index: int, key: str) -> Path:
        return self.dir / unit_name(index, key)

    def load(self, index: int, key: str) -> dict[str, Any] | None:
        path = self.path(index, key)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None  # cannot happen with atomic writes; recomputed if it does
        return data if data.get("key") == key else None

    def save(self, index: int, key: str, data: dict[str, Any]) -> None:
        write_json_atomic(self.path(index, key), {"key": key, **data})


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True) + "\n")


def model_fingerprint(name_or_path: str) -> dict[str, Any]:
    """sha256 over a local model's safetensors files (name and size first); a hub id is recorded as given."""
    path = Path(str(name_or_path)).expanduser()
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return {"model": str(name_or_path), "sha256": None}
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}:{f.stat().st_size}".encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return {"model": str(path), "sha256": digest.hexdigest()}


def data_fingerprint(items: list[Any]) -> str:
    """sha256 of the JSON form of a benchmark's records or a prompt set (what the run actually used)."""
    import dataclasses

    rows = [dataclasses.asdict(i) if dataclasses.is_dataclass(i) else i for i in items]
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
