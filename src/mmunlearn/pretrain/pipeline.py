"""World -> tokenizer/processor/model -> curriculum -> accuracy table, cached by content hash.

The cache key covers the world, model and training settings plus a code version, so a second run
with the same settings reuses the saved model, and any change trains a new one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mmunlearn.config import PretrainSettings, WorldConfig, cache_dir, model_spec, pretrain_settings, world_config
from mmunlearn.errors import CacheError, ConfigError, one_line
from mmunlearn.metrics.bootstrap import cluster_bootstrap_ci
from mmunlearn.models.smol_llava import SmolLlavaSpec
from mmunlearn.models.tiny_llava import TinyLlavaSpec, build_model, build_processor, build_tokenizer
from mmunlearn.pretrain.batches import Encoder, PixelBank
from mmunlearn.pretrain.evaluate import MeasureResult, run_measures
from mmunlearn.pretrain.tasks import MEASURES, training_pools
from mmunlearn.pretrain.trainer import Rehearsal, StepLog, attention_kernel, train
from mmunlearn.pretrain.vision_warmup import identity_keys, warm_up_tower
from mmunlearn.runner.manifest import atomic_dir, manifest, now, write_json_atomic
from mmunlearn.runner.run_dir import check_writable
from mmunlearn.world.corpus import Corpus, Splits, reading_words
from mmunlearn.world.entities import World, generate_world

CODE_VERSION = 5  # bump when a change to world or training code changes what a config produces
REPORT_FILE = "pretrain_report.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", REPORT_FILE)


@dataclass(frozen=True)
class WorldBundle:
    world: World
    corpus: Corpus


def build_world(wcfg: WorldConfig) -> WorldBundle:
    world = generate_world(wcfg.seed, wcfg.size)
    return WorldBundle(world, Corpus(world, Splits.make(world, wcfg.heldout_share)))


# Fields added after models were cached: at these values they leave existing cache keys unchanged.
KEY_NEUTRAL = {"align": None, "lora": None, "sparse_logits": False, "frozen_layers": 0, "vision_warmup": None,
               "vision_lr_scale": 1.0, "schedule": "constant", "task_augment": {}, "strength_power": 1.0,
               "rehearsal": 0, "rehearsal_weight": 1.0, "label_smoothing": 0.0}


def _key_fields(value):
    if isinstance(value, dict):
        return {k: _key_fields(v) for k, v in value.items() if not (k in KEY_NEUTRAL and v == KEY_NEUTRAL[k])}
    if isinstance(value, list):
        return [_key_fields(v) for v in value]
    return value


def cache_key(wcfg: WorldConfig, spec, settings: PretrainSettings) -> str:
    blob = json.dumps(_key_fields({"code": CODE_VERSION, "world": dataclasses.asdict(wcfg),
                                   "model": dataclasses.asdict(spec), "pretrain": dataclasses.asdict(settings)}),
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_model_dir(path: Path) -> None:
    """Raises CacheError naming the first missing or unreadable file of a saved model."""
    if not path.is_dir():
        raise CacheError(f"{path}: no model directory there")
    for name in REQUIRED_FILES:
        if not (path / name).is_file() or (path / name).stat().st_size == 0:
            raise CacheError(f"{path / name}: missing or empty (corrupt cache; rerun with --force)")
    try:
        json.loads((path / REPORT_FILE).read_text())
        json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheError(f"{path}: unreadable JSON ({exc.msg if hasattr(exc, 'msg') else exc}); rerun with --force") \
            from None
    check_safetensors(path / "model.safetensors")


def check_safetensors(path: Path) -> None:
    """Raises CacheError when a weights file's header does not describe the file (truncated or not safetensors);
    reads the header only, so it costs microseconds even for a large model."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            weights.keys()
    except (SafetensorError, OSError) as exc:
        raise CacheError(f"{path}: unreadable weights ({one_line(exc)}); corrupt cache, rerun with --force") \
            from None


def load_pretrained(path: Path):
    """Model and processor through the Auto classes, as any hub model; safetensors only."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    check_model_dir(path)
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, use_safetensors=True)
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CacheError(f"{path}: cannot load model ({one_line(exc)}); rerun with --force") from None
    model.eval()
    return model, processor


@dataclass
class TinySetup:
    """Everything the tiny model's training starts from, untrained: what `pretrain` and the step benchmark share."""

    tokenizer: Any
    processor: Any
    model: Any
    bank: PixelBank
    encoder: Encoder
    name_ids: dict[int, int]
    word_ids: dict[str, int]


def tiny_setup(bundle: WorldBundle, spec: TinyLlavaSpec, settings: PretrainSettings) -> TinySetup:
    """A tokenizer trained on the world, its processor, the model initialised from the training seed, the pixel
    bank and encoder, and the token ids that grounding pulls image features toward."""
    tokenizer = build_tokenizer(bundle.corpus.all_text())
    processor = build_processor(tokenizer, spec)
    torch.manual_seed(settings.train.seed)
    model = build_model(tokenizer, spec)
    bank = PixelBank(bundle.world, processor.image_processor, spec.image_size, workers=torch.get_num_threads())
    encoder = Encoder(tokenizer, spec.image_seq_length, bank, settings.n_augment, settings.n_text_variants,
                      task_augment=settings.task_augment)
    name_ids = {c.index: tokenizer.convert_tokens_to_ids(c.name) for c in bundle.world.creatures}
    word_ids = {w: tokenizer.convert_tokens_to_ids(w) for w in reading_words(bundle.world)}
    return TinySetup(tokenizer, processor, model, bank, encoder, name_ids, word_ids)


def _train_tiny(bundle: WorldBundle, spec: TinyLlavaSpec, settings: PretrainSettings, pools, log):
    """The tiny model from scratch: tokenizer trained on the world, the vision warm-up, the grounded curriculum."""
    setup = tiny_setup(bundle, spec, settings)
    model = setup.model
    n_params = sum(p.numel() for p in model.parameters())
    log(f"world: {bundle.world.size} creatures, {len(setup.tokenizer)} tokens; model: {n_params / 1e6:.2f}M parameters")
    warmup_log = None
    if settings.vision_warmup is not None:
        with attention_kernel(model, settings.train.attention):
            warmup_log = warm_up_tower(model.model.vision_tower, setup.bank, settings.vision_warmup,
                                       settings.train.seed, settings.train.weight_decay, settings.train.grad_clip, log)
    warmup = settings.vision_warmup
    rehearsal = Rehearsal(identity_keys(bundle.world, warmup), warmup.rehearsal, warmup.rehearsal_weight,
                          settings.train.seed) if warmup is not None and warmup.rehearsal else None
    total = sum(s.steps for s in settings.train.stages)
    with tqdm(total=total, desc="pretrain", unit="step", disable=None) as bar:
        def on_log(e: StepLog) -> None:
            bar.write(f"step {e.step:5d} [{e.stage}] loss {e.loss:.3f} ground {e.ground:.3f} "
                      f"token_acc {e.token_acc:.3f} ({e.seconds:.0f}s)")
        logs = train(model, setup.encoder, pools, settings.train, setup.name_ids, setup.word_ids, on_log=on_log,
                     log_every=settings.log_every, progress=bar.update, rehearsal=rehearsal)
    return model, setup.processor, setup.encoder, n_params, logs, warmup_log


@dataclass
class PretrainResult:
    path: Path
    reused: bool
    report: dict


def measure_table(measures: dict[str, MeasureResult]) -> dict[str, dict]:
    """Each measure's rate, counts, samples and 95% CI from resampling creatures (`cluster_bootstrap_ci`)."""
    table = {}
    for n, r in measures.items():
        ci = cluster_bootstrap_ci([c for c, _ in r.clusters], [t for _, t in r.clusters]) if r.clusters else None
        table[n] = {"rate": r.rate, "correct": r.correct, "total": r.total, "kind": r.kind,
                    "samples": [list(s) for s in r.samples], "clusters": len(r.clusters),
                    **({"ci": [ci.low, ci.high]} if ci is not None and ci.n else {})}
    return table


def pretrain(cfg: DictConfig, force: bool = False, log: Callable[[str], None] = print) -> PretrainResult:
    wcfg, spec, settings = world_config(cfg), model_spec(cfg), pretrain_settings(cfg)
    torch.set_num_threads(int(cfg.threads))
    key = cache_key(wcfg, spec, settings)
    kind = "smol" if isinstance(spec, SmolLlavaSpec) else "tiny"
    final = cache_dir(cfg) / "models" / f"{kind}-{key}"
    with _training_lock(final, log):
        if final.exists() and not force:
            check_model_dir(final)
            log(f"reusing cached model {final}")
            return PretrainResult(final, True, json.loads((final / REPORT_FILE).read_text()))
        check_writable(final.parent, "cache directory")  # before training, not when saving its result
        return _pretrain_into(final, cfg, wcfg, spec, settings, key, log)


@contextmanager
def _training_lock(final: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Holds `final`'s lock file: a second process asking for the same model waits for the first to save it,
    then reuses it, instead of training its own copy."""
    lock = FileLock(final.parent / f".{final.name}.lock")
    locked = True
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        log(f"another process is training {final}; waiting for it")
        lock.acquire()
    except OSError as exc:  # a read-only cache: reading a saved model needs no lock, and saving fails loudly
        log(f"cannot lock {final.parent} ({exc.strerror or exc}); going on without a lock")
        locked = False
    try:
        yield
    finally:
        if locked:
            lock.release()


def _pretrain_into(final: Path, cfg: DictConfig, wcfg: WorldConfig, spec, settings: PretrainSettings, key: str,
                   log: Callable[[str], None]) -> PretrainResult:
    started, t0 = now(), time.perf_counter()
    bundle = build_world(wcfg)
    pools = training_pools(bundle.corpus)
    extra: dict = {}
    if isinstance(spec, SmolLlavaSpec):
        from mmunlearn.pretrain.smol import build_and_train

        if settings.vision_warmup is not None:
            raise ConfigError("config pretrain.vision_warmup: the tiny model's only (the smol model's tower is "
                              "pretrained and aligned by pretrain.align)")
        if settings.align is None or settings.lora is None:
            raise ConfigError("config pretrain: the smol model needs pretrain.align and pretrain.lora "
                              "(model=smol selects pretrain=smol, which has both)")
        built = build_and_train(bundle, spec, settings, pools, cache_dir(cfg), log)
        model, processor, encoder, n_params, logs = (built.model, built.processor, built.encoder, built.n_params,
                                                     built.train_log)
        extra["align_log"] = built.align_log
        max_new_tokens = 48  # subword tokens: a hazard procedure is about 30
    else:
        model, processor, encoder, n_params, logs, warmup_log = _train_tiny(bundle, spec, settings, pools, log)
        if warmup_log is not None:
            extra["vision_warmup_log"] = warmup_log
        max_new_tokens = 32
    train_seconds = time.perf_counter() - t0
    log("evaluating ...")
    measures = run_measures(model, encoder, bundle.corpus, list(MEASURES), limit=settings.eval_limit,
                            seed=settings.train.seed, max_new_tokens=max_new_tokens)
    report = {"measures": measure_table(measures), "train_seconds": train_seconds,
              "total_seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(),
              "n_params": n_params, "cache_key": key, "log": [dataclasses.asdict(e) for e in logs], **extra}
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_json_atomic(tmp / REPORT_FILE, report)
        write_json_atomic(tmp / "manifest.json", manifest(
            OmegaConf.to_container(cfg), {"world": wcfg.seed, "pretrain": settings.train.seed},
            started=started, finished=now(), cache_key=key))
    return PretrainResult(final, False, report)
