"""Unlearning a whole forget set (the safety track): methods as losses, one training loop, exact restore.

Methods, registered by name, each only a loss over the step's batches:

* `yao` (textual unlearning, Yao et al. 2023): w_ga * (-NLL of harmful answers | harmful prompts)
  + w_rdn * NLL of random normal answers given harmful prompts + w_nor * KL(reference || model) on normal
  data. The reference code's bugs are not copied: the mismatch term masks exactly the answer tokens, padding
  never enters the KL, the whole (shuffled) forget set is used, and the pad id comes from the tokenizer;
* `npo`: -(2/beta) log sigmoid(-beta (log p - log p_ref)) on harmful answers + w_nor * NLL on normal data;
* `rmu`: ||h_l(forget) - c u||^2 + alpha ||h_l(normal) - h_l^ref(normal)||^2 at one layer l, u a seeded
  random unit vector (Li et al. 2024);
* `sft`: NLL of the refusal on harmful prompts + w_nor * NLL on normal data (refusal fine-tuning baseline).

Whether a method is "textual" or "multimodal" is decided by the data it is given, not by the loss. The
trainable parameters are the `Editor`'s (LoRA or full weights of language-model modules; the vision tower and
projector never train), so every method is undone exactly before the next one starts.
"""

from __future__ import annotations

import copy
import math
import random
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mmunlearn.defenses.editor import Editor, paused_training, training_only
from mmunlearn.errors import ConfigError
from mmunlearn.models.adapters.base import VLMAdapter, VLMBatch, VLMInput
from mmunlearn.registry import Registry


@dataclass
class UnlearnData:
    """Forget rows carry the harmful answer, `refusal` rows the refusal, `normal` rows normal answers."""

    forget: list[VLMInput]
    normal: list[VLMInput]
    refusal: list[VLMInput] = field(default_factory=list)
    random_answers: list[str] = field(default_factory=list)


@dataclass
class StepBatches:
    forget: VLMBatch | None = None
    mismatch: VLMBatch | None = None
    normal: VLMBatch | None = None
    refusal: VLMBatch | None = None


@dataclass
class UnlearnMethod:
    """A dataset-unlearning loss; subclasses say which batches they need."""

    name: ClassVar[str] = ""
    uses: ClassVar[tuple[str, ...]] = ()
    needs_reference: ClassVar[bool] = False

    def loss(self, trainer: UnlearnTrainer, batches: StepBatches) -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


METHODS: Registry[UnlearnMethod] = Registry("unlearning method")
register_method = METHODS.register


def known_methods() -> list[str]:
    return sorted(METHODS.names())


def get_method(name: str, **params: Any) -> UnlearnMethod:
    return METHODS.create(name, **params)


# ---------------------------------------------------------------------- token-level terms


def answer_logprobs(logits: torch.Tensor, batch: VLMBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed log-probs of the answer tokens and the per-row answer token counts."""
    labels = batch.inputs["labels"]
    shifted = labels[:, 1:]
    mask = shifted != -100
    logp = logits[:, :-1].float().log_softmax(-1)
    token_lp = logp.gather(-1, shifted.clamp_min(0)[..., None])[..., 0] * mask
    return token_lp.sum(-1), mask.sum(-1)


def mean_nll(logits: torch.Tensor, batch: VLMBatch) -> torch.Tensor:
    """Mean over answer tokens of the batch (every row's answer mask exactly, never the prompt)."""
    total, count = answer_logprobs(logits, batch)
    return -total.sum() / count.sum().clamp_min(1)


def kl_on_tokens(ref_logits: torch.Tensor, logits: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) per real (non-pad) position, averaged over those positions."""
    ref = ref_logits.float().log_softmax(-1)
    cur = logits.float().log_softmax(-1)
    per_pos = (ref.exp() * (ref - cur)).sum(-1)
    mask = attention.bool()
    return per_pos[mask].mean()


@register_method("yao")
@dataclass
class Yao(UnlearnMethod):
    """Yao et al. (2023): gradient ascent on the harmful answers, learning mismatched random answers for the
    same requests, and KL to the original model on normal data."""

    uses: ClassVar[tuple[str, ...]] = ("forget", "mismatch", "normal")
    needs_reference: ClassVar[bool] = True
    ga_weight: float = 0.5
    random_weight: float = 1.0
    normal_weight: float = 1.0

    def loss(self, trainer: UnlearnTrainer, b: StepBatches) -> torch.Tensor:
        assert b.forget is not None and b.mismatch is not None and b.normal is not None
        ga = -mean_nll(trainer.logits(b.forget), b.forget)
        rdn = mean_nll(trainer.logits(b.mismatch), b.mismatch)
        normal_logits = trainer.logits(b.normal)
        kl = kl_on_tokens(trainer.reference_logits(b.normal), normal_logits, b.normal.inputs["attention_mask"])
        return self.ga_weight * ga + self.random_weight * rdn + self.normal_weight * kl


@register_method("npo")
@dataclass
class NPO(UnlearnMethod):
    """NPO (Zhang et al., 2024) on the harmful answers against the original model, plus the likelihood of
    normal data."""

    uses: ClassVar[tuple[str, ...]] = ("forget", "normal")
    needs_reference: ClassVar[bool] = True
    beta: float = 0.1
    normal_weight: float = 1.0

    def loss(self, trainer: UnlearnTrainer, b: StepBatches) -> torch.Tensor:
        assert b.forget is not None and b.normal is not None
        logp, _ = answer_logprobs(trainer.logits(b.forget), b.forget)
        ref, _ = answer_logprobs(trainer.reference_logits(b.forget), b.forget)
        npo = -(2.0 / self.beta) * F.logsigmoid(-self.beta * (logp - ref)).mean()
        return npo + self.normal_weight * mean_nll(trainer.logits(b.normal), b.normal)


@register_method("rmu")
@dataclass
class RMU(UnlearnMethod):
    """RMU (Li et al., 2024): steer the forget data's hidden states at `layer` to a random direction, keep
    normal data's states at the original model's."""

    uses: ClassVar[tuple[str, ...]] = ("forget", "normal")
    needs_reference: ClassVar[bool] = True
    layer: int = -2
    steering: float = 6.5
    alpha: float = 100.0

    def loss(self, trainer: UnlearnTrainer, b: StepBatches) -> torch.Tensor:
        assert b.forget is not None and b.normal is not None
        forget_h = trainer.hidden(b.forget, self.layer)
        u = trainer.random_direction(forget_h.shape[-1])
        mask_f = b.forget.inputs["attention_mask"].bool()
        forget_term = (forget_h[mask_f] - self.steering * u).pow(2).sum(-1).mean()
        normal_h = trainer.hidden(b.normal, self.layer)
        ref_h = trainer.reference_hidden(b.normal, self.layer)
        mask_n = b.normal.inputs["attention_mask"].bool()
        retain_term = (normal_h[mask_n] - ref_h[mask_n]).pow(2).sum(-1).mean()
        return forget_term + self.alpha * retain_term


@register_method("sft")
@dataclass
class RefusalSFT(UnlearnMethod):
    """Refusal SFT: learn to refuse the harmful requests, plus the likelihood of normal data."""

    uses: ClassVar[tuple[str, ...]] = ("refusal", "normal")
    normal_weight: float = 1.0

    def loss(self, trainer: UnlearnTrainer, b: StepBatches) -> torch.Tensor:
        assert b.refusal is not None and b.normal is not None
        return mean_nll(trainer.logits(b.refusal), b.refusal) + \
            self.normal_weight * mean_nll(trainer.logits(b.normal), b.normal)


# ---------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError("unlearning settings: steps and batch_size must be >= 1 and lr > 0")


@dataclass
class Compute:
    """What one training run cost: tokens, FLOPs (training + reference passes), wall time, memory."""

    steps: int
    text_tokens: int = 0
    image_tokens: int = 0
    flops: float = 0.0
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    memory_kind: str = "process max RSS"

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("steps", "text_tokens", "image_tokens", "flops", "seconds",
                                              "peak_memory_mb", "memory_kind")}


def _reset_peak_rss() -> bool:
    """Start the process's peak resident memory afresh (Linux's /proc/self/clear_refs), so a run's peak is its own
    and not the largest of the runs before it in this process; False where the system has no such reset."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _cycle(rows: Sequence[VLMInput], batch_size: int, rng: random.Random) -> Iterator[list[VLMInput]]:
    """Seeded epochs over all rows: every row is used before any repeats (the whole forget set)."""
    if not rows:
        while True:
            yield []
    while True:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            if len(chunk) < batch_size:
                chunk += order[:batch_size - len(chunk)]
            yield [rows[i] for i in chunk]


class UnlearnTrainer:
    """Trains the editor's parameters on one method's loss; `restore()` on the editor undoes it."""

    def __init__(self, adapter: VLMAdapter, editor: Editor, settings: TrainSettings) -> None:
        self.adapter = adapter
        self.editor = editor
        self.settings = settings
        self._reference_model: torch.nn.Module | None = None
        self._direction: torch.Tensor | None = None
        self.compute = Compute(steps=0)

    # ------------------------------------------------------------------ model readouts

    def logits(self, batch: VLMBatch) -> torch.Tensor:
        self._count(batch, backward=True)
        return self.adapter.model(**batch.model_inputs()).logits

    def hidden(self, batch: VLMBatch, layer: int) -> torch.Tensor:
        self._count(batch, backward=True)
        out = self.adapter.model(**batch.model_inputs(), output_hidden_states=True)
        return out.hidden_states[layer]

    @torch.no_grad()
    def reference_logits(self, batch: VLMBatch) -> torch.Tensor:
        self._count(batch, backward=False)
        with self._reference() as model:
            return model(**batch.model_inputs()).logits.detach()

    @torch.no_grad()
    def reference_hidden(self, batch: VLMBatch, layer: int) -> torch.Tensor:
        self._count(batch, backward=False)
        with self._reference() as model:
            return model(**batch.model_inputs(), output_hidden_states=True).hidden_states[layer].detach()

    def random_direction(self, size: int) -> torch.Tensor:
        if self._direction is None or self._direction.shape[-1] != size:
            gen = torch.Generator().manual_seed(self.settings.seed)
            u = torch.rand(size, generator=gen)
            self._direction = (u / u.norm()).to(self.adapter.device)
        return self._direction

    def _reference(self) -> Any:
        """The original model: LoRA layers switched off, or a frozen copy taken before training (full)."""
        import contextlib

        @contextlib.contextmanager
        def lora_off() -> Iterator[torch.nn.Module]:
            layers = [m for m in self.adapter.model.modules() if hasattr(m, "enable_adapters")
                      and hasattr(m, "lora_A")]
            for m in layers:
                m.enable_adapters(False)
            try:
                yield self.adapter.model
            finally:
                for m in layers:
                    m.enable_adapters(True)

        @contextlib.contextmanager
        def frozen_copy() -> Iterator[torch.nn.Module]:
            assert self._reference_model is not None
            yield self._reference_model

        return lora_off() if self.editor.config.method == "lora" else frozen_copy()

    def _count(self, batch: VLMBatch, backward: bool) -> None:
        ids = batch.inputs["input_ids"]
        real = batch.inputs["attention_mask"].bool()
        image = int(((ids == self.adapter.image_token_id) & real).sum()) if self.adapter.image_token_id is not None \
            else 0
        if backward:
            self.compute.text_tokens += int(real.sum()) - image
            self.compute.image_tokens += image
        self.compute.flops += self._flops(int(real.sum()), image, len(ids), backward)

    def _flops(self, tokens: int, image_tokens: int, rows: int, backward: bool) -> float:
        """2 FLOPs per LM parameter per token (x3 with backward) + the frozen vision tower's forward."""
        per_token = 2.0 * self._lm_params
        language = per_token * tokens * (3.0 if backward else 1.0)
        vision = 2.0 * self._vision_params * image_tokens if image_tokens else 0.0
        return language + vision

    # ------------------------------------------------------------------ training

    def _batches(self, method: UnlearnMethod, data: UnlearnData) -> Iterator[StepBatches]:
        rng = random.Random(f"unlearn/{self.settings.seed}")
        bs = self.settings.batch_size
        forget = _cycle(data.forget, bs, rng)
        normal = _cycle(data.normal, bs, rng)
        refusal = _cycle(data.refusal, bs, rng)
        fmt = self.adapter.format
        while True:
            f_rows, n_rows, r_rows = next(forget), next(normal), next(refusal)
            b = StepBatches()
            if "forget" in method.uses:
                b.forget = fmt(f_rows, for_generation=False)
            if "mismatch" in method.uses:
                if not data.random_answers:
                    raise ConfigError(f"method {method.name!r} needs random answers for its mismatch term")
                b.mismatch = fmt([VLMInput(r.image, r.question, rng.choice(data.random_answers)) for r in f_rows],
                                 for_generation=False)
            if "normal" in method.uses:
                b.normal = fmt(n_rows, for_generation=False)
            if "refusal" in method.uses:
                if not r_rows:
                    raise ConfigError(f"method {method.name!r} needs refusal rows")
                b.refusal = fmt(r_rows, for_generation=False)
            yield b

    def train(self, method: UnlearnMethod, data: UnlearnData,
              progress: Callable[[int, float], None] | None = None, checkpoints: Sequence[int] = (),
              on_checkpoint: Callable[[int], bool | None] | None = None) -> list[float]:
        """`settings.steps` AdamW steps on `method`'s loss; returns the losses and fills `self.compute`.

        After each step count in `checkpoints`, `on_checkpoint(step)` sees the model as trained so far, in eval
        mode, without parameter gradients and with the random state forked, so the training that follows is the
        same as without it; its time is not counted in `compute.seconds` (its memory, on the CPU, is in the
        peak RSS). When it returns True the training stops there (early stopping; `compute.steps` says where)."""
        if "forget" in method.uses and not data.forget:
            raise ConfigError(f"method {method.name!r} needs forget rows")
        model = self.adapter.model
        self._lm_params = sum(p.numel() for p in self.adapter._params(self.adapter.language_model_path))
        self._vision_params = sum(p.numel() for p in self.adapter._params(self.adapter.vision_tower_path))
        if method.needs_reference and self.editor.config.method != "lora":
            self._reference_model = copy.deepcopy(model).eval().requires_grad_(False)
        params = self.editor.trainable
        optimizer = torch.optim.AdamW(params, lr=self.settings.lr, weight_decay=0.0)
        self.compute = Compute(steps=self.settings.steps)
        on_cuda = self.adapter.device.type == "cuda"  # the model's device, not merely a visible GPU
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(self.adapter.device)
        own_peak = not on_cuda and _reset_peak_rss()
        losses: list[float] = []
        wanted = set(checkpoints)
        paused = 0.0
        start = time.perf_counter()
        try:
            with training_only(model, params), torch.random.fork_rng():
                torch.manual_seed(self.settings.seed)
                batches = self._batches(method, data)
                for step in range(self.settings.steps):
                    loss = method.loss(self, next(batches))
                    if not math.isfinite(float(loss.detach())):
                        raise ConfigError(f"method {method.name!r}: loss became {float(loss.detach())} at step {step}; "
                                          "lower the learning rate")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
                    if progress is not None:
                        progress(step, losses[-1])
                    if on_checkpoint is not None and step + 1 in wanted:
                        t = time.perf_counter()
                        with paused_training(model), torch.random.fork_rng():
                            stop = on_checkpoint(step + 1)
                        paused += time.perf_counter() - t
                        if stop:
                            self.compute.steps = step + 1
                            break
        finally:
            self._reference_model = None
        self.compute.seconds = time.perf_counter() - start - paused
        if on_cuda:
            self.compute.peak_memory_mb = torch.cuda.max_memory_allocated(self.adapter.device) / 2**20
            self.compute.memory_kind = "CUDA max allocated"
        else:
            self.compute.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            self.compute.memory_kind = "peak RSS of the run" if own_peak else "process max RSS"
        return losses
