"""The pretraining curriculum: a seeded stream of mixed-task batches, stage by stage.

Stages are (steps, task weights). An auxiliary grounding loss pulls the mean projected image
features of a creature toward the language model's embedding of its name, so facts learned from
text are reachable from the image (composition) instead of being memorised twice.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mmunlearn.pretrain.batches import Batch, Encoder
from mmunlearn.world.corpus import Example


@dataclass
class Stage:
    name: str
    steps: int
    weights: dict[str, float]
    ground_weight: float = 0.0


@dataclass
class TrainConfig:
    seed: int = 0
    batch_size: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    buckets: int = 3
    stages: list[Stage] = field(default_factory=list)


@dataclass
class StepLog:
    step: int
    stage: str
    loss: float
    ground: float
    token_acc: float
    seconds: float


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


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


def grounding_loss(model, batch: Batch, features: torch.Tensor, name_ids: dict[int, int]) -> torch.Tensor:
    """1 - cos(mean image features, embedding of the pictured creature's name), over creature images."""
    rows = [(j, batch.examples[r].creature) for j, r in enumerate(batch.image_rows)
            if batch.examples[r].image.kind == "creature"]
    if not rows:
        return features.new_zeros(())
    idx = torch.tensor([j for j, _ in rows])
    target_ids = torch.tensor([name_ids[c] for _, c in rows])
    pooled = features[idx].mean(dim=1)
    target = model.get_input_embeddings()(target_ids).detach()
    return (1 - F.cosine_similarity(pooled, target, dim=-1)).mean()


def train(model, encoder: Encoder, pools: dict[str, list[Example]], cfg: TrainConfig, name_ids: dict[int, int],
          on_log: Callable[[StepLog], None] | None = None, log_every: int = 25, progress=None) -> list[StepLog]:
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    total = sum(s.steps for s in cfg.stages)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    hook = GroundingHook(model.model.multi_modal_projector)
    logs: list[StepLog] = []
    step, start = 0, time.perf_counter()
    model.train()
    try:
        for stage in cfg.stages:
            run_loss = run_ground = run_acc = 0.0
            n = 0
            for _ in range(stage.steps):
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total, cfg)
                examples = sample_batch(pools, stage.weights, cfg.batch_size, rng)
                # rows sorted by length into buckets, each padded on its own: far less padding to compute
                examples.sort(key=lambda ex: len(encoder.encode(ex)[0]))
                chunks = [examples[j * len(examples) // cfg.buckets:(j + 1) * len(examples) // cfg.buckets]
                          for j in range(cfg.buckets)]
                n_answer = sum(len(encoder.encode(ex)[0]) - encoder.encode(ex)[1] for ex in examples)
                opt.zero_grad(set_to_none=True)
                loss_sum = ground_sum = correct = 0.0
                for chunk in chunks:
                    batch = encoder.collate(chunk, rng)
                    hook.features = None
                    logits = model(**batch.model_inputs()).logits
                    token_loss, chunk_correct = answer_loss(logits, batch.labels, reduction="sum")
                    part = token_loss / n_answer
                    if stage.ground_weight > 0 and hook.features is not None:
                        ground = grounding_loss(model, batch, hook.features, name_ids)
                        part = part + stage.ground_weight * ground * len(chunk) / len(examples)
                        ground_sum += ground.item() * len(chunk) / len(examples)
                    part.backward()
                    loss_sum += token_loss.item()
                    correct += chunk_correct
                loss, acc, ground = loss_sum / n_answer, correct / n_answer, ground_sum
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                step += 1
                run_loss, run_ground, run_acc, n = run_loss + loss, run_ground + ground, run_acc + acc, n + 1
                if progress is not None:
                    progress(1)
                if step % log_every == 0 or step == total:
                    entry = StepLog(step, stage.name, run_loss / n, run_ground / n, run_acc / n,
                                    time.perf_counter() - start)
                    logs.append(entry)
                    if on_log:
                        on_log(entry)
                    run_loss = run_ground = run_acc = 0.0
                    n = 0
    finally:
        hook.remove()
        model.eval()
    return logs
