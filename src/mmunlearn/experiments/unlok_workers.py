"""UnLOK units shared among worker processes on one machine (`unlok.workers`).

A small model on a CPU keeps few cores busy inside one forward pass: on 2 cores the default UnLOK run takes
194 s in two processes of one thread each and 231 s in one process of two threads (benchmarks/unlok_workers.py,
docs/performance.md).
Units are independent (a group's results depend only on its facts, `GroupRunner`), so each worker loads the
model, takes pending units from a shared queue, and writes each finished unit into the run directory as the
single process would; the parent then assembles the summary from the units. Each worker gets
`threads // workers` torch threads (at least one). A worker's error stops the run with its one-line message;
finished units stay, and the same command resumes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mmunlearn.errors import ConfigError, MMUnlearnError, one_line


def configured_workers(cfg: DictConfig) -> int:
    """`unlok.workers`, checked: a whole number >= 1, or `auto` = one per `threads` for the embedded tiny model
    on the CPU (`unlok.model: null`, `device: cpu`) and 1 otherwise (each worker holds a copy of the model; one
    process keeps an accelerator busy)."""
    value = cfg.unlok.get("workers", 1)
    if value == "auto":
        import torch

        on_cpu = torch.device(str(cfg.get("device", "cpu"))).type == "cpu"  # cpu:0 too; checked by configured_device
        return max(1, int(cfg.threads)) if cfg.unlok.get("model") is None and on_cpu else 1
    try:
        workers = int(1 if value is None else value)
    except (TypeError, ValueError):
        raise ConfigError(f"config unlok.workers: expected auto or a whole number >= 1, got {value!r}") from None
    if workers < 1:
        raise ConfigError(f"config unlok.workers: expected auto or a whole number >= 1, got {value!r}")
    return workers


def _work(config: dict[str, Any], out_dir: str, threads: int, todo: Any, results: Any, parent: int) -> None:
    """A worker: load the benchmark and model, then run units from `todo` until its None (or until the parent
    process, pid `parent`, is gone)."""
    try:
        import torch

        from mmunlearn.experiments.unlok import GroupRunner, load_benchmark, load_model
        from mmunlearn.runner.run_dir import Units

        # This worker's share is its `threads` (read again by whatever loads the model): more threads than
        # cores across the workers makes each of them many times slower.
        cfg = OmegaConf.create({**config, "threads": threads})
        benchmark = load_benchmark(cfg)
        adapter = load_model(cfg, lambda _message: None)
        torch.set_num_threads(threads)
        units = Units(Path(out_dir))
        with GroupRunner(cfg, benchmark, adapter, show_states=False) as runner:
            while (start := todo.get()) is not None:
                if os.getppid() != parent:
                    return  # the run was killed: leave the remaining units to the rerun
                runner.run_unit(start, units)
                results.put(("unit", start))
        results.put(("done", None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(("error", one_line(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, 400)))


def run_in_workers(cfg: DictConfig, out_dir: Path, starts: Sequence[int], workers: int,
                   on_unit: Callable[[int], None]) -> None:
    """Run the units at `starts` in `workers` spawned processes; `on_unit(start)` as each one finishes."""
    context = mp.get_context("spawn")  # a fresh interpreter: no forked torch thread pools or locks
    todo, results = context.Queue(), context.Queue()
    for start in starts:
        todo.put(start)
    for _ in range(workers):
        todo.put(None)
    threads = max(1, int(cfg.threads) // workers)
    config = OmegaConf.to_container(cfg, resolve=True)
    processes = [context.Process(target=_work, args=(config, str(out_dir), threads, todo, results, os.getpid()),
                                 daemon=True)
                 for _ in range(workers)]
    for process in processes:
        process.start()
    try:
        finished = 0
        while finished < workers:
            try:
                kind, value = results.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise MMUnlearnError(f"an unlok worker process exited with code {dead[0].exitcode} without a "
                                         "report (killed, e.g. out of memory, or it could not start); finished "
                                         "units are kept, rerun to resume") from None
                continue
            if kind == "error":
                raise MMUnlearnError(f"unlok worker: {value}")
            if kind == "unit":
                on_unit(int(value))
            else:
                finished += 1
        for process in processes:
            process.join()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join()
