"""What an attack on one fact may read: the model, the benchmark, the record, and cached model readouts.

A context is a snapshot of ONE model state. Its caches (the target's hidden states and logit lens, the
probe's training states) are computed on first use and never refreshed, so whenever the weights change (a
defense step, a LoRA merged or swapped, another checkpoint) build a new context; reusing an old one reads
the old model. The same holds for a `state_cache` shared between contexts.

The adapter is used only through `encode`, `hidden_and_lens`, `hidden_states`, `generate`, `num_layers` and
`tokenizer.decode`, so a stub exposing those drives every attack in tests.

Attacks declare what they will read (`Attack.needs` -> `Needs`), so a caller holding many contexts can
compute those readouts for all of them in a few merged calls (`attacks.prefetch`) before the attacks run.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from mmunlearn.data.records import Benchmark, FactRecord
from mmunlearn.errors import MMUnlearnError
from mmunlearn.models.adapters.base import VLMInput

# Each token id's text, per tokenizer (decoding one id at a time is most of a lens attack's bookkeeping).
_TOKEN_TEXTS: weakref.WeakKeyDictionary[Any, dict[int, str]] = weakref.WeakKeyDictionary()

# Per-record (hidden states [n_layers + 1, hidden], answer's first-token id) of one model state.
StateCache = dict[str, tuple[torch.Tensor, int]]


@dataclass(frozen=True)
class SampleRequest:
    """One seeded sample of one (image, question): also the key its text is cached under.

    The adapter draws each row from its own seed, so the text does not depend on which other requests
    share its generation call.
    """

    image: str
    question: str
    seed: int
    max_new_tokens: int
    temperature: float
    top_p: float

    def params(self) -> tuple[int, float, float]:
        """The generation settings one `generate` call must share."""
        return self.max_new_tokens, self.temperature, self.top_p


@dataclass
class Needs:
    """What an attack will read from the model for one fact: the target's forward pass (hidden states and
    logit lens), other records' states (`probe_records` of them), and samples."""

    forward: bool = False
    probe_records: int = 0
    samples: list[SampleRequest] = field(default_factory=list)


class AttackContext:
    """One fact under attack on one model state, with each model readout computed at most once.

    `seed` fixes everything random an attack does (sampling, the probe's training records); `state_cache`,
    when given, is shared by the contexts of one model state so probe states of a record are computed once
    per run rather than once per target.
    """

    def __init__(self, adapter: Any, benchmark: Benchmark, record: FactRecord, seed: int = 0, *,
                 state_cache: StateCache | None = None) -> None:
        self.adapter = adapter
        self.benchmark = benchmark
        self.record = record
        self.seed = int(seed)
        self.state_cache: StateCache = {} if state_cache is None else state_cache
        self._images: dict[str, Image.Image] = {}
        self._target: int | None = None
        self._hidden: torch.Tensor | None = None
        self._lens: torch.Tensor | None = None
        self._probe: dict[int, tuple[torch.Tensor, torch.Tensor, list[str]]] = {}
        self._probe_records: dict[int, list[FactRecord]] = {}
        self.samples: dict[SampleRequest, str] = {}

    # ------------------------------------------------------------------ inputs

    @property
    def num_layers(self) -> int:
        """Decoder layers; hidden-state indices run 0 (embeddings) .. num_layers (last layer)."""
        return int(self.adapter.num_layers)

    def image(self, ref: str) -> Image.Image:
        """The benchmark image `ref`, loaded once per context (attacks reuse the original many times)."""
        if ref not in self._images:
            self._images[ref] = self.benchmark.image(ref)
        return self._images[ref]

    def item(self, question: str | None = None, image_ref: str | None = None) -> VLMInput:
        """The record's (image, question), either part replaced; no answer (a generation prompt)."""
        return VLMInput(self.image(image_ref or self.record.image), question or self.record.question)

    def seed_for(self, tag: str) -> int:
        """A seed for one random step of one attack: stable, and distinct across records and attacks."""
        digest = hashlib.sha256(f"{self.seed}/{self.record.id}/{tag}".encode()).digest()
        return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF

    def decode_tokens(self, ids: list[int]) -> list[str]:
        """Each token id as text on its own (candidate lists are stored readable); decoded once per tokenizer."""
        tokenizer = self.adapter.tokenizer
        texts = _TOKEN_TEXTS.setdefault(tokenizer, {})
        out = []
        for i in ids:
            text = texts.get(i)
            if text is None:
                text = texts[i] = tokenizer.decode([int(i)])
            out.append(text)
        return out

    # ------------------------------------------------------------------ the target

    def first_answer_token(self, record: FactRecord) -> int:
        row = self.adapter.encode(VLMInput(self.image(record.image), record.question, record.answer),
                                  for_generation=False)
        start = row.answer_start
        if start is None or start >= len(row.input_ids):
            raise MMUnlearnError(f"record {record.id!r}: its answer {record.answer!r} encodes to no tokens")
        return int(row.input_ids[start])

    def target_token_id(self) -> int:
        """The true answer's first token as the model would emit it in the answer turn (no forward pass)."""
        if self._target is None:
            self._target = self.first_answer_token(self.record)
        return self._target

    def _forward(self) -> None:
        hidden, lens = self.adapter.hidden_and_lens([self.item()])
        self.set_forward(hidden[0], lens[0])

    def set_forward(self, hidden: torch.Tensor, lens: torch.Tensor) -> None:
        """The target's forward pass, computed elsewhere (a merged call over many contexts)."""
        self._hidden, self._lens = hidden, lens
        self.state_cache.setdefault(self.record.id, (self._hidden, self.target_token_id()))

    @property
    def has_forward(self) -> bool:
        return self._hidden is not None

    def lens(self) -> torch.Tensor:
        """Logit-lens log-probs at the last prompt position of (image, question): [n_layers + 1, vocab]."""
        if self._lens is None:
            self._forward()
        assert self._lens is not None
        return self._lens

    def hidden(self) -> torch.Tensor:
        """Hidden states of the same forward pass as `lens`: [n_layers + 1, hidden], fp32."""
        if self._hidden is None:
            self._forward()
        assert self._hidden is not None
        return self._hidden

    # ------------------------------------------------------------------ probe training data

    def probe_records(self, n_records: int) -> list[FactRecord]:
        """A seeded sample of other records: never the target, nor a record asking its exact (image, question)."""
        if n_records not in self._probe_records:
            key = (self.record.image, self.record.question)
            others = [r for r in self.benchmark.records if r.id != self.record.id and (r.image, r.question) != key]
            if not others:
                raise MMUnlearnError(f"record {self.record.id!r}: the benchmark has no other record to train a "
                                     f"probe on")
            rng = random.Random(f"probe/{self.seed}/{self.record.id}")
            self._probe_records[n_records] = rng.sample(others, min(n_records, len(others)))
        return self._probe_records[n_records]

    def missing_states(self, n_records: int) -> list[FactRecord]:
        """The records of `probe_records(n_records)` whose states are not cached yet."""
        return [r for r in self.probe_records(n_records) if r.id not in self.state_cache]

    def add_states(self, records: Sequence[FactRecord], states: torch.Tensor) -> None:
        """Hidden states [n, n_layers + 1, hidden] of `records` on this context's model state."""
        for r, h in zip(records, states):
            self.state_cache[r.id] = (h, self.first_answer_token(r))

    def probe_states(self, n_records: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Hidden states [n, n_layers + 1, hidden] and first answer tokens [n] of `probe_records(n_records)`.

        Records missing from `state_cache` go through the model in one batched call.
        """
        if n_records not in self._probe:
            records = self.probe_records(n_records)
            missing = self.missing_states(n_records)
            if missing:
                self.add_states(missing, self.adapter.hidden_states(
                    [VLMInput(self.image(r.image), r.question) for r in missing]))
            hidden = torch.stack([self.state_cache[r.id][0] for r in records])
            targets = torch.tensor([self.state_cache[r.id][1] for r in records], dtype=torch.long)
            self._probe[n_records] = (hidden, targets, [r.id for r in records])
        return self._probe[n_records]

    # ------------------------------------------------------------------ samples

    def sample(self, requests: Sequence[SampleRequest]) -> list[str]:
        """The text of each request; those not cached yet are generated, one call per generation setting."""
        fetch_samples([self], [requests])
        return [self.samples[r] for r in requests]


Route = Callable[[Sequence[int]], AbstractContextManager[Any]]


def routing(route: Route | None, owners: Sequence[int]) -> AbstractContextManager[Any]:
    """`route(owners)`, or no routing at all."""
    return contextlib.nullcontext() if route is None else route(owners)


def fetch_samples(contexts: Sequence[AttackContext], requests: Sequence[Sequence[SampleRequest]],
                  route: Route | None = None) -> None:
    """Generate the requests of every context not cached yet, one `adapter.sample` call per generation
    setting for all contexts together (an item per context and prompt, routed as context i = owner i)."""
    groups: dict[tuple[int, float, float], dict[tuple[int, str, str], list[SampleRequest]]] = {}
    for i, (ctx, wanted) in enumerate(zip(contexts, requests)):
        for r in dict.fromkeys(wanted):
            if r not in ctx.samples:
                groups.setdefault(r.params(), {}).setdefault((i, r.image, r.question), []).append(r)
    for params, prompts in groups.items():
        with routing(route, [i for i, _, _ in prompts]):
            texts = contexts[0].adapter.sample([VLMInput(contexts[i].image(image), question)
                                                for i, image, question in prompts],
                                               [[r.seed for r in rs] for rs in prompts.values()], *params)
        for (i, _, _), rs, got in zip(prompts, prompts.values(), texts):
            contexts[i].samples.update(zip(rs, got))
