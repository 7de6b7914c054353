"""UnLOK run in one process vs shared among worker processes, side by side, with the summaries compared.

Usage: python benchmarks/unlok_workers.py [--workers 2] [--out results.json] [KEY=VALUE ...]
Runs `mmunlearn unlok run` twice into fresh directories, with `unlok.workers=1` (all `threads` in one
process) and with `unlok.workers=N` (`threads // N` each), alternating the order over `--repeats`; the model is
pretrained first if it is not cached (not counted). Prints wall times, their ratio and whether the two
`summary.json` files are byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mmunlearn.cli", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    _run(["pretrain", *args.overrides])
    times: dict[int, list[float]] = {1: [], args.workers: []}
    identical = True
    with tempfile.TemporaryDirectory(prefix="mmunlearn-workers-") as tmp:
        for repeat in range(args.repeats):
            order = [1, args.workers] if repeat % 2 == 0 else [args.workers, 1]
            summaries = {}
            for workers in order:
                out = Path(tmp) / f"r{repeat}-w{workers}"
                times[workers].append(_run(["unlok", "run", "--out", str(out), *args.overrides,
                                            f"unlok.workers={workers}"]))
                summaries[workers] = (out / "summary.json").read_bytes()
            identical &= summaries[1] == summaries[args.workers]
    one, many = statistics.median(times[1]), statistics.median(times[args.workers])
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores visible; overrides: {args.overrides or 'none'}; "
          f"{args.repeats} repeat(s), medians")
    print("| unlok run | wall | ratio |")
    print("|---|---|---|")
    print(f"| one process | {one:.0f} s | 1.00x |")
    print(f"| {args.workers} worker processes | {many:.0f} s | {one / many:.2f}x faster |")
    print(f"summary.json byte-identical: {'yes' if identical else 'NO'}")
    if args.out:
        Path(args.out).write_text(json.dumps({"one_process_seconds": times[1], "workers": args.workers,
                                              "workers_seconds": times[args.workers],
                                              "identical_summaries": identical}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
