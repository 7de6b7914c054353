"""Units of the tracks shared among worker processes on one machine (`unlok.workers`).

A small model on a CPU keeps few cores busy inside one forward pass: on 2 cores the default UnLOK run takes
194 s in two processes of one thread each and 231 s in one process of two threads (benchmarks/unlok_workers.py,
docs/performance.md).
Units are independent (a UnLOK group's results depend only on its facts, `GroupRunner`; a safety run's only
on its definition, `SafetyRunner`), so each worker takes pending `(track, unit)` jobs from a shared queue,
opens that track's runner (its own copy of the model) the first time it meets the track, and writes each
finished unit into the track's directory as the single process would; the parent then assembles each track's
summary from its units. `mmunlearn run` puts both tracks' units in one queue, so no core idles while the
other finishes the last UnLOK group and the safety runs wait. Each worker gets `threads // workers` torch
threads (at least one). A worker's error stops the run with its one-line message; finished units stay, and
the same command resumes.
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
from mmunlearn.runner.run_dir import Units


def configured_workers(cfg: DictConfig) -> int:
    """`unlok.workers`, checked: a whole number >= 1, or `auto` = one per `threads` (at most one per core this
    process may use) for the embedded tiny model on the CPU (`unlok.model: null`, `device: cpu`) and 1 otherwise
    (each worker holds a copy of the model; one process keeps an accelerator busy)."""
    value = cfg.unlok.get("workers", 1)
    if value == "auto":
        from mmunlearn.config import device_named

        on_cpu = device_named(cfg).type == "cpu"  # cpu:0 too; whether this machine has it: configured_device
        return max(1, min(int(cfg.threads), usable_cpus())) if cfg.unlok.get("model") is None and on_cpu else 1
    try:
        workers = int(1 if value is None else value)
    except (TypeError, ValueError):
        raise ConfigError(f"config unlok.workers: expected auto or a whole number >= 1, got {value!r}") from None
    if workers < 1:
        raise ConfigError(f"config unlok.workers: expected auto or a whole number >= 1, got {value!r}")
    return workers


def usable_cpus() -> int:
    """The cores this process may run on (its affinity where the system tells it, else all of them)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def prepare_shared_model(cfg: DictConfig, log: Callable[[str], None]) -> None:
    """The embedded tiny model (`unlok.model: null`) pretrained, or found in the cache, here in the parent with
    all `threads` before any worker starts: workers that each found it missing would each train it on their
    share of the threads (two one-thread pretrainings side by side took a cold `mmunlearn run` from about
    800 s to 1,138 s). A named model is only loaded, by each worker."""
    if cfg.unlok.get("model") is None:
        from mmunlearn.pretrain.pipeline import pretrain

        pretrain(cfg, log=log)


def open_runner(track: str, cfg: DictConfig) -> Any:
    """The runner of `track`'s units (a context manager with `run_unit(index, units)`), its model loaded."""
    if track == "unlok":
        from mmunlearn.experiments.unlok import GroupRunner, load_benchmark, load_model

        return GroupRunner(cfg, load_benchmark(cfg), load_model(cfg, lambda _message: None), show_states=False)
    if track == "safety":
        from mmunlearn.experiments.safety import SafetyRunner

        return SafetyRunner(cfg, log=lambda _message: None)
    raise ValueError(f"no runner for track {track!r}")


class UnitsWhileParentLives(Units):
    """A worker's units of a track: a unit finished after the parent (pid `parent`) was killed is not written,
    since by then the directory may have been taken over by a run of another config (`run_dir.abandoned`)."""

    def __init__(self, track_dir: Path, parent: int) -> None:
        super().__init__(track_dir)
        self.parent = parent

    def save(self, index: int, key: str, data: dict[str, Any]) -> None:
        if os.getppid() != self.parent:
            raise SystemExit(0)  # the rerun computes this unit again
        super().save(index, key, data)


def _work(config: dict[str, Any], out_dirs: dict[str, str], threads: int, todo: Any, results: Any,
          parent: int) -> None:
    """A worker: run `(track, index)` jobs from `todo` until its None (or until the parent process, pid
    `parent`, is gone), opening each track's runner when its first job comes."""
    try:
        import contextlib
        import threading

        import torch
        from tqdm import tqdm

        # tqdm's default lock is a multiprocessing semaphore, registered with the parent's resource tracker; a
        # worker stopped by `terminate` (another worker failed, Ctrl-C) never unregisters it, and the tracker
        # then warns of a leaked semaphore after the run's own message. This worker's bars need a thread lock.
        tqdm.set_lock(threading.RLock())

        # This worker's share is its `threads` (read again by whatever loads the model): more threads than
        # cores across the workers makes each of them many times slower.
        cfg = OmegaConf.create({**config, "threads": threads})
        torch.set_num_threads(threads)
        runners: dict[str, Any] = {}
        with contextlib.ExitStack() as stack:
            while (job := todo.get()) is not None:
                if os.getppid() != parent:
                    return  # the run was killed: leave the remaining units to the rerun
                track, index = job
                if track not in runners:
                    runners[track] = stack.enter_context(open_runner(track, cfg))
                    torch.set_num_threads(threads)
                runners[track].run_unit(index, UnitsWhileParentLives(Path(out_dirs[track]), parent))
                results.put(("unit", job))
        results.put(("done", None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(("error", one_line(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, 400)))


def run_in_workers(cfg: DictConfig, out_dirs: dict[str, Path], jobs: Sequence[tuple[str, int]], workers: int,
                   on_unit: Callable[[str, int], None]) -> None:
    """Run `jobs`, `(track, unit index)` pairs in queue order, in `workers` spawned processes, each track's
    units written into `out_dirs[track]`; `on_unit(track, index)` as each one finishes."""
    context = mp.get_context("spawn")  # a fresh interpreter: no forked torch thread pools or locks
    todo, results = context.Queue(), context.Queue()
    for job in jobs:
        todo.put(job)
    for _ in range(workers):
        todo.put(None)
    threads = max(1, int(cfg.threads) // workers)
    config = OmegaConf.to_container(cfg, resolve=True)
    processes = [context.Process(target=_work, args=(config, {t: str(d) for t, d in out_dirs.items()}, threads, todo,
                                                         results, os.getpid()),
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
                    raise MMUnlearnError(f"a worker process exited with code {dead[0].exitcode} without a "
                                         "report (killed, e.g. out of memory, or it could not start); finished "
                                         "units are kept, rerun to resume") from None
                continue
            if kind == "error":
                raise MMUnlearnError(f"worker process: {value}")
            if kind == "unit":
                on_unit(str(value[0]), int(value[1]))
            else:
                finished += 1
        for process in processes:
            process.join()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join()
