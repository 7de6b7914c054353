"""The default run end to end (`mmunlearn run`, both tracks), warm and optionally cold, as a user runs it.

Usage: python benchmarks/end_to_end.py [--cold | --cold-only] [--keep DIR] [--out results.json] [KEY=VALUE ...]
Warm: the model is already in the cache (it is pretrained first if it is not, and that time is not
counted). Cold: a fresh, empty cache directory, so pretraining is part of the time. Each run goes into a
new temporary run directory (`--keep DIR`: the warm run goes to DIR and stays); the per-track wall times
come from each track's own timings file.
Targets (issue: performance): cold <= 10 min, warm <= 3 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"warm": 180.0, "cold": 600.0}


def _mmunlearn(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mmunlearn.cli", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _track_seconds(run_dir: Path) -> dict[str, float]:
    out = {}
    for path in sorted(run_dir.rglob("timings.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        seconds = data.get("wall_seconds_this_call", data.get("wall_seconds"))
        if seconds is not None:
            out[path.parent.name] = float(seconds)
        if "model_seconds_this_call" in data:  # the shared model pretrained (cold) or found, before the workers
            out["model"] = float(data["model_seconds_this_call"])
        if "pooled_seconds_this_call" in data:  # both tracks' units in one queue of workers; the tracks assemble
            out["pooled units"] = float(data["pooled_seconds_this_call"])
    return out


def measure(kind: str, overrides: list[str], base_env: dict[str, str], keep: Path | None = None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix=f"mmunlearn-{kind}-") as tmp:
        env = dict(base_env)
        if kind == "cold":
            env["MMUNLEARN_CACHE"] = str(Path(tmp) / "cache")
        else:
            _mmunlearn(["pretrain", *overrides], env)  # make sure the model is cached; not counted
        run_dir = keep if keep is not None else Path(tmp) / "run"
        wall = _mmunlearn(["run", "--out", str(run_dir), *overrides], env)
        return {"kind": kind, "wall_seconds": wall, "tracks": _track_seconds(run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="also time a cold run (pretraining included)")
    parser.add_argument("--cold-only", action="store_true", help="time only the cold run")
    parser.add_argument("--keep", type=Path, help="write the warm run here and keep it (a new directory)")
    parser.add_argument("--out")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep}: exists; give a new directory (a finished run would be reused)")
    results = [] if args.cold_only else [measure("warm", args.overrides, env, args.keep)]
    if args.cold or args.cold_only:
        results.append(measure("cold", args.overrides, env))
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores visible; overrides: {args.overrides or 'none'}")
    print("| run | wall | tracks | target | met |")
    print("|---|---|---|---|---|")
    for r in results:
        tracks = ", ".join(f"{k} {v:.0f} s" for k, v in r["tracks"].items())  # type: ignore[union-attr]
        target = TARGETS[str(r["kind"])]
        wall = float(r["wall_seconds"])  # type: ignore[arg-type]
        print(f"| {r['kind']} | {wall:.0f} s | {tracks} | <= {target:.0f} s | {'yes' if wall <= target else 'NO'} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
