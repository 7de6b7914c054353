"""`mmunlearn` command line: parses, calls the library, prints. Errors are one line and exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mmunlearn.errors import ConfigError, MMUnlearnError


def _overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. world.size=50 pretrain.lr=0.002")


def cmd_world_build(args: argparse.Namespace) -> None:
    from mmunlearn.config import load_config, world_config
    from mmunlearn.pretrain.pipeline import build_world
    from mmunlearn.runner.manifest import write_json_atomic
    from mmunlearn.runner.run_dir import check_writable

    cfg = load_config(args.overrides)
    wcfg = world_config(cfg)
    if args.out:
        check_writable(Path(args.out).parent)
    bundle = build_world(wcfg)
    w = bundle.world
    n_facts = sum(len(c.attributes) for c in w.creatures)
    print(f"world seed {w.seed}: {w.size} creatures, {n_facts} facts, "
          f"{len(bundle.corpus.splits.heldout_pairs)} held out from image form")
    if args.out:
        write_json_atomic(Path(args.out), w.to_dict())
        print(f"wrote {args.out}")


def cmd_world_show(args: argparse.Namespace) -> None:
    from mmunlearn.config import load_config, world_config
    from mmunlearn.runner.manifest import atomic_file
    from mmunlearn.runner.run_dir import check_writable
    from mmunlearn.world.contact_sheet import contact_sheet
    from mmunlearn.world.entities import generate_world

    cfg = load_config(args.overrides)
    wcfg = world_config(cfg)
    out = Path(args.out or Path(str(cfg.paths.output_dir)) / "world_contact_sheet.png")
    check_writable(out.parent)
    sheet = contact_sheet(generate_world(wcfg.seed, wcfg.size), rows=args.rows, image_size=wcfg.image_size)
    with atomic_file(out) as tmp:
        sheet.save(tmp, format="PNG")
    print(out)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from mmunlearn.config import load_config
    from mmunlearn.pretrain.pipeline import pretrain
    from mmunlearn.pretrain.report import markdown_table

    cfg = load_config(args.overrides)
    result = pretrain(cfg, force=args.force)
    report = result.report
    print(f"\n{cfg.model.get('kind', 'tiny')} model accuracy (world size {cfg.world.size}; "
          f"trained in {report['train_seconds']:.0f}s{', cached' if result.reused else ''}):")
    print(markdown_table(report["measures"]))
    print(result.path)


def cmd_unlok_run(args: argparse.Namespace) -> None:
    from mmunlearn.config import load_config
    from mmunlearn.experiments.unlok import run_unlok

    cfg = load_config(args.overrides)
    out = Path(args.out or Path(str(cfg.paths.output_dir)) / "unlok")
    result = run_unlok(cfg, out)
    print()
    print(result.summary["tables"]["attack_success"])
    print()
    print(result.summary["tables"]["questions"])
    print(f"\nwall time {result.seconds:.0f} s; report: {out / 'report.md'}")
    print(out)


def cmd_safety_run(args: argparse.Namespace) -> None:
    from mmunlearn.config import load_config
    from mmunlearn.experiments.safety import run_safety

    cfg = load_config(args.overrides)
    out = Path(args.out or Path(str(cfg.paths.output_dir)) / "safety")
    summary, seconds = run_safety(cfg, out)
    print()
    for judge in cfg.safety.judges:
        print(f"attack success rate, judge {judge}:")
        print(summary["tables"][f"asr/{judge}"])
        print()
    print(summary["tables"]["utility"])
    print()
    from mmunlearn.experiments.safety_summary import compute_markdown

    timings = json.loads((out / "timings.json").read_text(encoding="utf-8"))
    print(compute_markdown(summary["compute"], timings))
    print(f"\nwall time {seconds:.0f} s; report: {out / 'report.md'}")
    print(out)


def cmd_list(args: argparse.Namespace) -> None:
    """Registered components with the parameters this config runs them with."""
    from mmunlearn.catalog import catalog, render
    from mmunlearn.config import load_config

    words = [args.kind, *args.overrides] if args.kind else list(args.overrides)
    kinds = [w for w in words if "=" not in w and not w.startswith(("+", "~"))]
    print(render(catalog(load_config([w for w in words if w not in kinds]), kinds or None)), end="")


def cmd_config(args: argparse.Namespace) -> None:
    """The resolved config, after every check `mmunlearn run` makes before any work (a dry run)."""
    from omegaconf import OmegaConf

    from mmunlearn.config import load_config

    tracks = _tracks(args.tracks)
    cfg = load_config(args.overrides)
    _check_run_config(cfg, tracks)
    print(OmegaConf.to_yaml(cfg, resolve=True), end="")


TRACKS = ("unlok", "safety")


def _tracks(value: str) -> list[str]:
    tracks = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in tracks if t not in TRACKS]
    if unknown or not tracks:
        raise ConfigError(f"--tracks: unknown track(s) {unknown}; known: {', '.join(TRACKS)}")
    return tracks


def cmd_run(args: argparse.Namespace) -> None:
    """The default experiment: both tracks on one run directory; rerunning resumes it. `-m` sweeps."""
    tracks = _tracks(args.tracks)
    if not args.multirun:
        if args.list_jobs:
            raise ConfigError("--list-jobs needs -m/--multirun")
        _run_one(args.overrides, args.out, tracks)
        return
    import shlex

    from mmunlearn.runner.sweep import expand_sweeps, job_dir_name, swept_keys

    jobs = expand_sweeps(args.overrides)
    if args.list_jobs:
        for job in jobs:
            print(" ".join(shlex.quote(o) for o in job))
        return
    keys = swept_keys(args.overrides)
    from mmunlearn.config import load_config

    for job in jobs:  # every job's config is checked before the first one starts
        _check_run_config(load_config(job), tracks)
    sweep_dir = Path(args.out or Path(str(load_config(jobs[0]).paths.output_dir)) / "sweep")
    for i, job in enumerate(jobs):
        print(f"\n[{i + 1}/{len(jobs)}] {' '.join(job)}")
        _run_one(job, str(sweep_dir / job_dir_name(i, job, keys)), tracks)


def _check_run_config(cfg: object, tracks: list[str]) -> None:
    """Every name and setting of the tracks and of the embedded model's pretraining, checked before any work."""
    from mmunlearn.config import configured_device, model_spec, pretrain_settings, world_config
    from mmunlearn.experiments.safety import run_settings, suites_and_judges
    from mmunlearn.experiments.unlok import build_components, edit_overrides

    configured_device(cfg)
    world_config(cfg)
    model_spec(cfg)
    pretrain_settings(cfg)
    if "unlok" in tracks:
        edit_overrides(cfg, build_components(cfg)[0])
    if "safety" in tracks:
        run_settings(cfg)
        suites_and_judges(cfg)


def _run_pooled(cfg: Any, run_dir: Path, tracks: list[str]) -> None:
    """Both tracks on one model with `unlok.workers` > 1: every pending unit of both in one queue of worker
    processes (UnLOK groups first, then the safety runs, which fill the cores as the last groups finish);
    the tracks then only assemble their summaries. Otherwise nothing: each track runs its own units."""
    import time

    from tqdm import tqdm

    from mmunlearn.experiments.safety import pending_runs
    from mmunlearn.experiments.unlok import pending_groups
    from mmunlearn.experiments.workers import configured_workers, prepare_shared_model, run_in_workers
    from mmunlearn.runner.manifest import write_json_atomic

    workers = configured_workers(cfg)
    if set(tracks) != set(TRACKS) or workers < 2 or cfg.safety.model != cfg.unlok.model:
        return
    dirs = {track: run_dir / track for track in TRACKS}
    jobs = [("unlok", s) for s in pending_groups(cfg, dirs["unlok"])]
    jobs += [("safety", i) for i in pending_runs(cfg, dirs["safety"])]
    if not jobs:
        return
    t0 = time.perf_counter()
    prepare_shared_model(cfg, log=print)
    t1 = time.perf_counter()
    with tqdm(total=len(jobs), desc="units (unlok groups, safety runs)", unit="unit", disable=None) as bar:
        run_in_workers(cfg, dirs, jobs, workers, on_unit=lambda _track, _index: bar.update(1))
    write_json_atomic(run_dir / "timings.json", {"pooled_units": len(jobs), "workers": workers,
                                                 "model_seconds_this_call": t1 - t0,
                                                 "pooled_seconds_this_call": time.perf_counter() - t1})


def _run_one(overrides: list[str], out: str | None, tracks: list[str]) -> None:
    from omegaconf import OmegaConf

    from mmunlearn.config import load_config
    from mmunlearn.experiments.safety import run_safety
    from mmunlearn.experiments.unlok import run_unlok
    from mmunlearn.runner.manifest import git_sha, now, package_versions
    from mmunlearn.runner.run_dir import claimed, finish_manifest

    cfg = load_config(overrides)
    _check_run_config(cfg, tracks)
    run_dir = Path(out or Path(str(cfg.paths.output_dir)) / "run")
    with claimed(run_dir, OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
                 {"tracks": tracks, "started": now(), "versions": package_versions(), "git_sha": git_sha()}) \
            as resumed:  # a failed start withdraws the claim
        print(f"run directory {run_dir}{' (resuming)' if resumed else ''}")
        _run_pooled(cfg, run_dir, tracks)
        if "unlok" in tracks:
            result = run_unlok(cfg, run_dir / "unlok")
            print("\nUnLOK attack success:")
            print(result.summary["tables"]["attack_success"])
        if "safety" in tracks:
            summary, _ = run_safety(cfg, run_dir / "safety")
            asr = [k for k in summary["tables"] if k.startswith("asr/")]
            print(f"\nsafety attack success rate ({asr[0][4:]}):")
            print(summary["tables"][asr[0]])
    finish_manifest(run_dir, finished=now())
    from mmunlearn.report import build_report

    print(f"\nreport: {build_report(run_dir)}")
    print(run_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmunlearn", description="Multimodal unlearning toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)
    world = sub.add_parser("world", help="the embedded synthetic world").add_subparsers(dest="world_cmd",
                                                                                        required=True)
    build = world.add_parser("build", help="generate the world and print its size")
    build.add_argument("--out", help="also write the world as JSON here")
    _overrides(build)
    build.set_defaults(func=cmd_world_build)
    show = world.add_parser("show", help="write a contact sheet PNG of the world")
    show.add_argument("--out", help="PNG path (default: <paths.output_dir>/world_contact_sheet.png)")
    show.add_argument("--rows", type=int, default=8, help="creatures to show")
    _overrides(show)
    show.set_defaults(func=cmd_world_show)
    pre = sub.add_parser("pretrain", help="pretrain (or reuse) the tiny model; last line = model directory")
    pre.add_argument("--force", action="store_true", help="retrain even if a cached model exists")
    _overrides(pre)
    pre.set_defaults(func=cmd_pretrain)
    run_all = sub.add_parser("run", help="the default experiment (UnLOK + safety tracks); rerun to resume")
    run_all.add_argument("--out", help="run directory (default: <paths.output_dir>/run)")
    run_all.add_argument("--tracks", default=",".join(TRACKS), help="comma-separated: unlok, safety")
    run_all.add_argument("-m", "--multirun", action="store_true",
                         help="sweep: key=a,b expands to one resumable run per combination (Hydra's grammar)")
    run_all.add_argument("--list-jobs", action="store_true", help="with -m: print one job's overrides per line")
    _overrides(run_all)
    run_all.set_defaults(func=cmd_run)
    unlok = sub.add_parser("unlok", help="the UnLOK-VQA track: benchmark data and the experiment")
    unlok_sub = unlok.add_subparsers(dest="unlok_cmd", required=True)
    run = unlok_sub.add_parser("run", help="edit every fact with every defense, attack, write the tables")
    run.add_argument("--out", help="output directory (default: <paths.output_dir>/unlok)")
    _overrides(run)
    run.set_defaults(func=cmd_unlok_run)
    from mmunlearn.data.commands import add_unlok_data_parsers

    add_unlok_data_parsers(unlok_sub)
    safety = sub.add_parser("safety", help="the safety track: textual vs multimodal unlearning vs jailbreaks")
    safety_sub = safety.add_subparsers(dest="safety_cmd", required=True)
    srun = safety_sub.add_parser("run", help="train each run, attack with every suite, judge, write the tables")
    srun.add_argument("--out", help="output directory (default: <paths.output_dir>/safety)")
    _overrides(srun)
    srun.set_defaults(func=cmd_safety_run)
    from mmunlearn.report import report_commands

    report_commands(sub)
    listing = sub.add_parser("list", help="registered defenses, attacks, unlearning methods, suites, judges, "
                                          "dataset loaders and models, with the parameters a config runs them with")
    listing.add_argument("kind", nargs="?", help="one of defenses, attacks, methods, suites, judges, loaders, "
                                                 "models (default: all)")
    _overrides(listing)
    listing.set_defaults(func=cmd_list)
    config = sub.add_parser("config", help="check a config as `run` does before any work and print it resolved")
    config.add_argument("--tracks", default=",".join(TRACKS), help="comma-separated: unlok, safety")
    _overrides(config)
    config.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MMUnlearnError as exc:
        print(f"mmunlearn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # finished units and cached models are whole (atomic writes); the same command resumes
        print("mmunlearn: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as exc:  # a file that cannot be read or written (disk full, permissions ...): name it in one line
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)  # a rename names both
        print(f"mmunlearn: error: {where + ': ' if where else ''}{exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
