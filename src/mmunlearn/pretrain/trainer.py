"""The pretraining curriculum: a seeded stream of mixed-task batches, stage by stage.

Stages are (steps, task weights). An auxiliary grounding loss pulls the mean projected image
features of a creature toward the language model's embedding of its name, so facts learned from
text are reachable from the image (composition) instead of being memorised twice.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from mmunlearn.config_checks import at_least
from mmunlearn.errors import ConfigError
from mmunlearn.pretrain.batches import Batch, Encoder
from mmunlearn.pretrain.prefix_cache import PrefixCache
from mmunlearn.world.corpus import Example, ImageKey

BUCKET_SPLITS = ("rows", "padding")


def least_padding_cuts(lengths: list[int], buckets: int) -> list[tuple[int, int]]:
    """Cuts of ascending `lengths` into at most `buckets` contiguous runs, padding the fewest tokens.

    A run costs its size times its last (longest) length; exact dynamic programming over cut points, which for a
    batch of 128 rows is a few thousand additions.
    """
    n = len(lengths)
    if n == 0:
        return []
    # cost[j][i]: least padded tokens for the first i rows in j runs; back[j][i]: where the last run starts
    cost = [[float("inf")] * (n + 1) for _ in range(buckets + 1)]
    back = [[0] * (n + 1) for _ in range(buckets + 1)]
    cost[0][0] = 0
    for j in range(1, buckets + 1):
        for i in range(j, n + 1):
            for start in range(j - 1, i):
                value = cost[j - 1][start] + (i - start) * lengths[i - 1]
                if value < cost[j][i]:
                    cost[j][i], back[j][i] = value, start
    runs = min(range(1, buckets + 1), key=lambda j: (cost[j][n], j))  # fewest runs among the cheapest
    cuts, end = [], n
    for j in range(runs, 0, -1):
        cuts.append((back[j][end], end))
        end = back[j][end]
    return cuts[::-1]


def bucket_cuts(lengths: list[int], buckets: int, split: str) -> list[tuple[int, int]]:
    """(start, end) of each bucket of ascending `lengths`: equal row counts, or the least padding."""
    if split == "padding":
        return least_padding_cuts(lengths, buckets)
    n = len(lengths)
    return [(j * n // buckets, (j + 1) * n // buckets) for j in range(buckets)]


@dataclass
class Stage:
    name: str
    steps: int = field(metadata=at_least(0))
    weights: dict[str, float] = field(default_factory=dict)
    ground_weight: float = field(default=0.0, metadata=at_least(0))


@dataclass
class TrainConfig:
    seed: int = field(default=0, metadata=at_least(0))
    batch_size: int = field(default=128, metadata=at_least(1))
    lr: float = field(default=3e-3, metadata=at_least(0, strict=True))
    min_lr_ratio: float = field(default=0.1, metadata=at_least(0, high=1))
    warmup_steps: int = field(default=50, metadata=at_least(0))
    weight_decay: float = field(default=0.01, metadata=at_least(0))
    grad_clip: float = field(default=1.0, metadata=at_least(0, strict=True))
    buckets: int = 3
    # How a sorted batch is cut into `buckets`: "rows" (equal row counts) or "padding" (the cuts that pad fewest
    # tokens: a few long hazard procedures no longer pad half the batch to their length).
    bucket_split: str = "rows"
    # The attention kernel while training ("sdpa", "eager", ...); the model goes back to its own afterwards. On a
    # tiny model's short rows the plain matmul attention ("eager") beats the fused CPU kernel.
    attention: str = "sdpa"
    ground_tokens: bool = False  # ground every image token of a creature image, not only their mean
    sparse_logits: bool = False  # LM head on answer positions only (large vocabularies: most of the head's cost)
    # Bottom LM layers that never train: text rows' states there are cached (PrefixCache).
    frozen_layers: int = field(default=0, metadata=at_least(0))
    # The vision tower's learning rate as a share of `lr` (0 = frozen): a tower taught identity on many renderings
    # by the vision warm-up keeps that robustness when the curriculum's few renderings do not retrain it.
    vision_lr_scale: float = 1.0
    stages: list[Stage] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.vision_lr_scale < 0:
            raise ConfigError(f"config pretrain.vision_lr_scale: must be >= 0, got {self.vision_lr_scale}")
        if self.buckets < 1:
            raise ConfigError(f"config pretrain.buckets: must be >= 1, got {self.buckets}")
        if self.bucket_split not in BUCKET_SPLITS:
            raise ConfigError(f"config pretrain.bucket_split: one of {', '.join(BUCKET_SPLITS)}, "
                              f"got {self.bucket_split!r}")
        if not known_attention(self.attention):
            raise ConfigError(f"config pretrain.attention: {self.attention!r} is not an attention kernel of "
                              f"transformers (eager, sdpa, flash_attention_2, ...)")


def known_attention(name: str) -> bool:
    """Whether transformers has an attention kernel of this name (a hub kernel `org/name` is taken on trust and
    checked when the model switches to it), so a typo fails before the world is rendered, not at the first step."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return name == "eager" or name in ALL_ATTENTION_FUNCTIONS or "/" in name


@dataclass
class StepLog:
    step: int
    stage: str
    loss: float
    ground: float
    token_acc: float
    seconds: float


@contextmanager
def attention_kernel(model, attention: str) -> Iterator[None]:
    """Runs the block with `model` on `attention` (its whole tree, towers included), then restores the kernel."""
    before = model.config._attn_implementation
    if attention == before:
        yield
        return
    try:
        model.set_attn_implementation(attention)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"config pretrain.attention: {str(exc).splitlines()[0]}") from None
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def sample_batch(pools: dict[str, list[Example]], weights: dict[str, float], size: int,
                 rng: random.Random) -> list[Example]:
    names = [n for n, w in weights.items() if w > 0]
    unknown = [n for n in names if n not in pools]
    if unknown:
        raise KeyError(f"unknown task(s) in stage weights: {unknown}")
    tasks = rng.choices(names, weights=[weights[n] for n in names], k=size)
    return [rng.choice(pools[t]) for t in tasks]


class GroundingHook:
    """Captures the projector's output (image features in the LM's input space) during a forward."""

    def __init__(self, projector: torch.nn.Module) -> None:
        self.features: torch.Tensor | None = None
        self.handle = projector.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.features = output

    def remove(self) -> None:
        self.handle.remove()


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> tuple[torch.Tensor, float]:
    """Cross-entropy on answer tokens; also the number (sum) or share (mean) of argmax hits."""
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=-100, reduction=reduction)
    mask = shift_labels != -100
    hits = ((shift_logits.argmax(-1) == shift_labels) & mask).sum().item()
    return loss, (hits if reduction == "sum" else hits / max(1, mask.sum().item()))


def sparse_answer_loss(model, batch: Batch, hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """`answer_loss` (summed) with the LM head applied only where a label is predicted: same value, far
    less compute when the vocabulary is large and answers are short. `hidden`: final states, if known."""
    if hidden is None:
        hidden = model.model(**batch.model_inputs()).last_hidden_state
    mask = batch.labels[:, 1:] != -100
    logits = model.lm_head(hidden[:, :-1][mask])
    targets = batch.labels[:, 1:][mask]
    loss = F.cross_entropy(logits, targets, reduction="sum")
    return loss, (logits.argmax(-1) == targets).sum().item()


GROUNDING_SCALE = 10.0  # inverse temperature of the cosine logits


def grounding_targets(examples: list[Example], image_rows: list[int], name_ids: dict[int, int],
                      word_ids: dict[str, int]) -> list[tuple[int, int, int]]:
    """(image index in pixel_values, band, token id): what each band of each image shows.

    A creature image is one band grounded to the creature's name; a typography card has one band per
    line of text (a horizontal strip of patches), each grounded to its word.
    """
    out = []
    for j, r in enumerate(image_rows):
        key = examples[r].image
        if key.kind == "creature":
            out.append((j, -1, name_ids[key.creature]))
        elif key.kind == "text" and all(w in word_ids for w in key.words):
            out += [(j, b if len(key.words) > 1 else -1, word_ids[w]) for b, w in enumerate(key.words)]
    return out


def grounding_rows(examples: list[Example], name_ids: dict[int, int], word_ids: dict[str, int],
                   image_tokens: int, per_token: bool = False) -> int:
    """How many pooled feature rows `grounding_loss` scores for these examples (its sum's divisor)."""
    rows = [r for r, ex in enumerate(examples) if ex.image is not None]
    return sum(image_tokens if per_token and band < 0 and examples[rows[j]].image.kind == "creature" else 1
               for j, band, _ in grounding_targets(examples, rows, name_ids, word_ids))


def grounding_loss(model, batch: Batch, features: torch.Tensor, name_ids: dict[int, int],
                   word_ids: dict[str, int], per_token: bool = False, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of pooled image features against the LM's input embeddings (cosine logits).

    Pulls what an image shows toward the embedding of the word for it, and away from other words, so
    the language model reads image features the way it reads that word in text. `reduction="sum"` lets a
    bucketed batch add its buckets up to the whole batch's mean.
    """
    targets = grounding_targets(batch.examples, batch.image_rows, name_ids, word_ids)
    if not targets:
        return features.new_zeros(())
    n_tokens = features.shape[1]
    grid = int(round(n_tokens ** 0.5))
    pooled, ids = [], []
    for j, band, token in targets:
        if band >= 0:
            n_bands = sum(1 for jj, _, _ in targets if jj == j)
            rows = grid // n_bands
            pooled.append(features[j, band * rows * grid:(band + 1) * rows * grid].mean(dim=0, keepdim=True))
        elif per_token and batch.examples[batch.image_rows[j]].image.kind == "creature":
            pooled.append(features[j])
        else:
            pooled.append(features[j].mean(dim=0, keepdim=True))
        ids += [token] * pooled[-1].shape[0]
    return word_loss(model, torch.cat(pooled), torch.tensor(ids), reduction)


def word_loss(model, pooled: torch.Tensor, ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of pooled image features against the LM's (detached) input embeddings, cosine logits."""
    table = F.normalize(model.get_input_embeddings().weight.detach(), dim=-1)
    logits = GROUNDING_SCALE * F.normalize(pooled, dim=-1) @ table.T
    return F.cross_entropy(logits, ids, reduction=reduction)


@dataclass
class Rehearsal:
    """The vision warm-up's renderings, grounded to the creature's name, a batch per curriculum step.

    The language model names an image about as often as the projected features' nearest name embedding is the
    creature's (hard images of the 2026-12-04 default model: 57.0% and 58.4%), so hard images are limited by
    the map from a rendering to the name. The curriculum grounds only its own image rows (a few dozen a step);
    this adds a batch drawn from all of the warm-up's renderings, through the tower and projector alone.
    """

    keys: list[ImageKey]
    batch: int
    weight: float
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def loss(self, model, bank, name_ids: dict[int, int]) -> torch.Tensor:
        """Mean grounding loss of the next batch of renderings (drawn with replacement)."""
        keys = [self.keys[self.rng.randrange(len(self.keys))] for _ in range(self.batch)]
        config = model.config
        features = model.model.get_image_features(
            pixel_values=bank.pixels(keys), vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy).pooler_output
        pooled = torch.stack([f.mean(dim=0) for f in features])
        return word_loss(model, pooled, torch.tensor([name_ids[k.creature] for k in keys]))


def _split_text_rows(chunks: list[list[Example]]) -> list[list[Example]]:
    """Each chunk split into its text-only and its image rows (the prefix cache serves text rows only)."""
    out = []
    for chunk in chunks:
        out += [[ex for ex in chunk if ex.image is None], [ex for ex in chunk if ex.image is not None]]
    return out


def train_step(model, encoder: Encoder, examples: list[Example], stage: Stage, cfg: TrainConfig,
               hook: GroundingHook, name_ids: dict[int, int], word_ids: dict[str, int],
               rng: random.Random, cache: PrefixCache | None = None,
               rehearsal: Rehearsal | None = None) -> tuple[float, float, float]:
    """One gradient computation over a batch; returns (answer loss, grounding loss, token accuracy).

    Rows are sorted by length into buckets, each padded on its own (far less padding to compute);
    the answer loss is normalised by the answer tokens of the whole batch and the grounding loss by its
    rows in the whole batch, so buckets add up exactly, however the batch is cut.
    """
    examples = sorted(examples, key=lambda ex: len(encoder.encode(ex)[0]))
    encoded = [encoder.encode(ex) for ex in examples]  # (token ids, prompt length), cached by the encoder
    chunks = [examples[a:b] for a, b in bucket_cuts([len(ids) for ids, _ in encoded], cfg.buckets, cfg.bucket_split)]
    n_answer = sum(len(ids) - n_prompt for ids, n_prompt in encoded)
    n_ground = grounding_rows(examples, name_ids, word_ids, encoder.image_seq_length, cfg.ground_tokens) \
        if stage.ground_weight > 0 else 0
    loss_sum = ground_sum = correct = 0.0
    if cache is not None:
        chunks = _split_text_rows(chunks)
    for chunk in chunks:
        if not chunk:
            continue
        batch = encoder.collate(chunk, rng)
        hook.features = None
        if cache is not None and not batch.image_rows:
            hidden = cache.last_hidden(batch.input_ids, batch.attention_mask)
            token_loss, chunk_correct = sparse_answer_loss(model, batch, hidden)
        elif cfg.sparse_logits:
            token_loss, chunk_correct = sparse_answer_loss(model, batch)
        else:
            token_loss, chunk_correct = answer_loss(model(**batch.model_inputs()).logits, batch.labels,
                                                    reduction="sum")
        part = token_loss / n_answer
        if n_ground and hook.features is not None:
            ground = grounding_loss(model, batch, hook.features, name_ids, word_ids, cfg.ground_tokens,
                                    reduction="sum") / n_ground
            part = part + stage.ground_weight * ground
            ground_sum += ground.item()
        part.backward()
        loss_sum += token_loss.item()
        correct += chunk_correct
    if rehearsal is not None:
        (rehearsal.weight * rehearsal.loss(model, encoder.bank, name_ids)).backward()
    return loss_sum / n_answer, ground_sum, correct / n_answer


def train(model, encoder: Encoder, pools: dict[str, list[Example]], cfg: TrainConfig, name_ids: dict[int, int],
          word_ids: dict[str, int] | None = None, on_log: Callable[[StepLog], None] | None = None,
          log_every: int = 25, progress: Callable[[int], object] | None = None,
          rehearsal: Rehearsal | None = None) -> list[StepLog]:
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    total = sum(s.steps for s in cfg.stages)
    tower = list(model.model.vision_tower.parameters())
    frozen = [p for p in tower if p.requires_grad] if cfg.vision_lr_scale == 0 else []
    for p in frozen:
        p.requires_grad_(False)  # no gradient is computed for them at all; restored at the end
    trainable = [p for p in model.parameters() if p.requires_grad]  # frozen parts (e.g. under LoRA) stay out
    own = {id(p) for p in tower} if cfg.vision_lr_scale not in (0.0, 1.0) else set()  # the tower's own groups
    groups = []
    for scale, part in ((1.0, [p for p in trainable if id(p) not in own]),
                        (cfg.vision_lr_scale, [p for p in trainable if id(p) in own])):
        groups += [{"params": [p for p in part if p.ndim >= 2], "weight_decay": cfg.weight_decay, "lr": cfg.lr * scale},
                   {"params": [p for p in part if p.ndim < 2], "weight_decay": 0.0, "lr": cfg.lr * scale}]
    # foreach: the same updates as the per-tensor loop, bit for bit, in one call (3.5 ms less per step on 2 cores)
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.98), foreach=True)
    # linear warm-up, then cosine down to min_lr_ratio of each group's own learning rate
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(opt, cfg.warmup_steps, total,
                                                            min_lr_rate=cfg.min_lr_ratio)
    hook = GroundingHook(model.model.multi_modal_projector)
    cache = PrefixCache(model, cfg.frozen_layers) if cfg.frozen_layers else None
    logs: list[StepLog] = []
    step, start = 0, time.perf_counter()
    model.train()
    try:
        with attention_kernel(model, cfg.attention):
            for stage in cfg.stages:
                window: list[tuple[float, float, float]] = []
                for _ in range(stage.steps):
                    examples = sample_batch(pools, stage.weights, cfg.batch_size, rng)
                    opt.zero_grad(set_to_none=True)
                    window.append(train_step(model, encoder, examples, stage, cfg, hook, name_ids, word_ids or {},
                                             rng, cache, rehearsal))
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                    opt.step()
                    scheduler.step()
                    step += 1
                    if progress is not None:
                        progress(1)
                    if step % log_every == 0 or step == total:
                        loss, ground, acc = (sum(v) / len(window) for v in zip(*window))
                        entry = StepLog(step, stage.name, loss, ground, acc, time.perf_counter() - start)
                        logs.append(entry)
                        if on_log:
                            on_log(entry)
                        window = []
    finally:
        hook.remove()
        for p in frozen:
            p.requires_grad_(True)
        model.eval()
    return logs
