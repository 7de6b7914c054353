"""Whitebox attacks: read the deleted answer out of the edited model's intermediate layers.

All four look at the last prompt position of the record's own (image, question) and succeed when the true
answer's first token is among their candidates:

* `hp` (head projection): p_l = softmax(lm_head(final_norm(h_l))) for each listed hidden state l; candidates
  are the top-k and the bottom-k tokens of each p_l.
* `pd` (probability delta): D = p_{l'} - p_l between consecutive listed layers (probability space), |L|-1
  distributions; top-k and bottom-k of each (a bottom-k hit is a token the later layer suppressed).
* `pd2`: the second difference of the same probabilities, |L|-2 distributions.
* `probe`: a ridge probe per layer, fitted on other facts' hidden states of the same edited model, reads
  the answer token from the target's hidden state; candidates are its top-k classes.

Budgets: k per distribution for top-k or bottom-k alone, 2k for their union, 1 for top-1; so B = k*|L'| and
2k*|L'| with |L'| the number of distributions. The headline `success` of hp/pd/pd2 is the top-k OR bottom-k
hit (budget 2k*|L'|); for `probe` it is the top-k hit.

`layers` are hidden-state indices: 0 the embeddings, n_layers the last layer's output (negative indices
count from the end), or a named selection of `mmunlearn.models.layer_spec` ("top_half", "all", "a:b", ...)
over the n_layers + 1 hidden states. They are used sorted, so the differences run from shallow to deep.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mmunlearn.attacks.context import AttackContext, Needs
from mmunlearn.attacks.registry import Attack, AttackOutcome, Slot, check_float, check_int, in_slot, register_attack
from mmunlearn.errors import ConfigError
from mmunlearn.models import layer_spec

# ---------------------------------------------------------------------- layers


def default_layers(n_layers: int, min_count: int = 1) -> list[int]:
    """The top half of the hidden states (n_layers=4: [2, 3, 4]), widened downwards to `min_count` entries."""
    start = min(n_layers // 2, max(0, n_layers + 1 - min_count))
    return list(range(start, n_layers + 1))


def resolve_layers(attack: str, layers: str | Sequence[int] | None, n_layers: int, min_count: int = 1) -> list[int]:
    """Listed hidden-state indices made non-negative, range-checked and sorted; one-line errors otherwise."""
    if layers is None:
        chosen = default_layers(n_layers, min_count)
    elif isinstance(layers, str):
        chosen = sorted(set(layer_spec.resolve_layers(layers, n_layers + 1, what=f"attack {attack!r}: layers")))
    else:
        chosen = []
        for value in layers:
            if not -(n_layers + 1) <= value <= n_layers:
                raise ConfigError(f"attack {attack!r}: layer {value} out of range; hidden-state indices run "
                                  f"{-(n_layers + 1)}..{n_layers} for a {n_layers}-layer model")
            chosen.append(value % (n_layers + 1))
        if len(set(chosen)) != len(chosen):
            raise ConfigError(f"attack {attack!r}: layers {list(layers)} name a hidden state twice")
        chosen.sort()
    if len(chosen) < min_count:
        raise ConfigError(f"attack {attack!r} needs at least {min_count} layers, got {chosen}")
    return chosen


def _check_layers(attack: str, layers: Any) -> str | list[int] | None:
    """Types only: the range depends on the model and is checked when the attack runs."""
    if layers is None:
        return None
    if isinstance(layers, str):
        layer_spec.check_name(layers, f"attack {attack!r}: parameter 'layers'")
        return layers
    if isinstance(layers, bytes) or not hasattr(layers, "__iter__"):
        raise ConfigError(f"attack {attack!r}: parameter 'layers' must be a list of integers, got {layers!r}")
    values = list(layers)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ConfigError(f"attack {attack!r}: parameter 'layers' must be a non-empty list of integers, "
                          f"got {values!r}")
    return [int(v) for v in values]


# ---------------------------------------------------------------------- candidates (pure)


@dataclass(frozen=True)
class Candidates:
    """Top-k and bottom-k token ids per distribution and the target's rank in each (0 = best).

    Ranks come from a stable sort, ties going to the lower token id, so `topk` is exactly
    "the target is in `top_ids`" and never disagrees with the stored candidates.
    """

    top_ids: list[list[int]]  # [D][k]
    bottom_ids: list[list[int]]  # [D][k] ([D][0] when bottom-k is not read)
    rank_top: list[int | None]  # per distribution; None where the target is not a class of the distribution
    rank_bottom: list[int | None]
    k: int

    @property
    def n_distributions(self) -> int:
        return len(self.top_ids)

    @property
    def top1(self) -> bool:
        return any(r == 0 for r in self.rank_top)

    @property
    def topk(self) -> bool:
        return any(r is not None and r < self.k for r in self.rank_top)

    @property
    def bottomk(self) -> bool:
        return any(r is not None and r < self.k for r in self.rank_bottom)

    @property
    def topk_or_bottomk(self) -> bool:
        return self.topk or self.bottomk

    def budgets(self) -> dict[str, int]:
        d = self.n_distributions
        return {"top1": d, "topk": self.k * d, "bottomk": self.k * d, "topk_or_bottomk": 2 * self.k * d}

    def ids(self, bottom: bool = True) -> list[int]:
        """Every candidate id once, layer by layer, top before bottom."""
        rows = [t + b for t, b in zip(self.top_ids, self.bottom_ids)] if bottom else self.top_ids
        return list(dict.fromkeys(i for row in rows for i in row))


def layer_distributions(logprobs: torch.Tensor, layers: Sequence[int], order: int) -> torch.Tensor:
    """Probabilities of the listed layers (order 0), their first (1) or second (2) difference.

    `logprobs` [..., n_layers + 1, vocab] -> [..., D, vocab] (a leading facts dimension is kept).
    """
    probs = logprobs[..., list(layers), :].double().exp()
    return torch.diff(probs, n=order, dim=-2) if order else probs


def stable_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [..., k] of the first k entries of each row in a stable descending sort (ties: lower index
    first), without sorting whole rows: the k-th value is found by `topk`, entries above it are taken, and
    ties at it are filled from the lowest index."""
    threshold = torch.topk(scores, k, dim=-1).values[..., -1:]
    above = scores > threshold
    ties = scores == threshold
    room = k - above.sum(-1, keepdim=True)
    take = above | (ties & (ties.cumsum(-1) <= room))
    picked = take.nonzero()[:, -1].view(*scores.shape[:-1], k)  # ascending index order within each row
    order = torch.sort(scores.gather(-1, picked), dim=-1, descending=True, stable=True).indices
    return picked.gather(-1, order)


def stable_rank(scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Position [...] of entry `index[...]` of each row of `scores` [..., n] in its stable descending sort."""
    value = scores.gather(-1, index[..., None])
    lower = torch.arange(scores.shape[-1]) < index[..., None]
    return (scores > value).sum(-1) + ((scores == value) & lower).sum(-1)


# Up to this many rows a full stable sort is cheaper than `stable_top` + `stable_rank` (measured on CPU:
# one sort costs ~12 us per 298-token row, the top-k route ~70 us plus ~3 us per row).
SORT_ROWS = 8


def top_and_ranks(scores: torch.Tensor, k: int, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k indices [..., k] of each row of `scores` [..., n] in a stable descending sort, and the
    position [...] of entry `index[...]` in that sort; a full sort for a few rows, the top-k route else."""
    if scores[..., 0].numel() <= SORT_ROWS:
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
        return order[..., :k], (order == index[..., None]).int().argmax(-1)
    return stable_top(scores, k), stable_rank(scores, index)


def _candidate_lists(scores: torch.Tensor, k: int, targets: torch.Tensor, valid: torch.Tensor | None = None,
                     labels: torch.Tensor | None = None) -> tuple[list, list[list[int | None]]]:
    """Top-k ids [F][D][k] of `scores` [F, D, n] (entry j named `labels[j]` when given) and each fact's
    target rank [F][D] (None for the facts where `valid` [F] is False: their target is no entry of theirs)."""
    top, rank = top_and_ranks(scores, k, targets[:, None].expand(-1, scores.shape[1]))
    ranks = rank.tolist()
    if valid is not None:
        ranks = [row if ok else [None] * len(row) for row, ok in zip(ranks, valid.tolist())]
    return (top if labels is None else labels[top]).tolist(), ranks


def logit_lens_candidates_many(probs: torch.Tensor, targets: Sequence[int], k: int) -> list[Candidates]:
    """Top-k / bottom-k of each row of `probs` [F, D, vocab] for F facts at once; orders are those of a
    stable sort (ties: lower token id first)."""
    if probs.dim() != 3 or probs.shape[1] == 0:
        raise ConfigError(f"logit-lens candidates need a [facts, distributions, vocab] tensor, "
                          f"got {tuple(probs.shape)}")
    k = min(int(k), int(probs.shape[-1]))
    wanted = torch.tensor(list(targets), dtype=torch.long)
    tops, rank_top = _candidate_lists(probs, k, wanted)
    bottoms, rank_bottom = _candidate_lists(-probs, k, wanted)
    return [Candidates(top_ids=t, bottom_ids=b, rank_top=rt, rank_bottom=rb, k=k)
            for t, b, rt, rb in zip(tops, bottoms, rank_top, rank_bottom)]


def logit_lens_candidates(probs: torch.Tensor, target: int, k: int) -> Candidates:
    """Top-k / bottom-k of each row of `probs` [D, vocab] (probabilities or their differences)."""
    if probs.dim() != 2 or probs.shape[0] == 0:
        raise ConfigError(f"logit-lens candidates need a [distributions, vocab] tensor, got {tuple(probs.shape)}")
    return logit_lens_candidates_many(probs[None], [target], k)[0]


@dataclass(frozen=True)
class LinearProbe:
    """Ridge probes of F facts, one per listed layer each, from a centred and scaled hidden state to the
    classes (token ids). The facts share one class list, the union of theirs; `present` marks each fact's
    own classes, and the others score -inf for it, so each fact ranks exactly its own classes."""

    classes: torch.Tensor  # [C] token ids, sorted
    present: torch.Tensor  # [F, C] bool
    mean: torch.Tensor  # [F, L, H]
    scale: torch.Tensor  # [F, L, 1]
    weight: torch.Tensor  # [F, L, H, C]
    bias: torch.Tensor  # [F, C]
    train_scores: torch.Tensor  # [F, n, L, C]: `scores` of the training states, from the fit itself

    @property
    def n_classes(self) -> list[int]:
        """Each fact's own number of classes."""
        return self.present.sum(-1).tolist()

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        """Class scores [F, ..., L, C] of hidden states [F, ..., L, H]; -inf for a fact's foreign classes."""
        extra = states.dim() - 3
        shape = (states.shape[0],) + (1,) * extra
        z = (states.double() - self.mean.view(*shape, *self.mean.shape[1:])) / \
            self.scale.view(*shape, *self.scale.shape[1:])
        out = torch.einsum("f...lh,flhc->f...lc", z, self.weight) + self.bias.view(*shape, 1, -1)
        return out.masked_fill(~self.present.view(*shape, 1, -1), float("-inf"))


def fit_probes(states: torch.Tensor, targets: torch.Tensor, ridge: float) -> LinearProbe:
    """Closed-form ridge regressions of one-hot targets [F, n] on states [F, n, L, H], per fact and layer.

    States are centred and divided by one RMS per layer (not per feature: near-constant features would be
    blown up to unit variance and dominate the target's reading). Solved by Cholesky in the smaller of the
    primal (H x H) and dual (n x n) forms, both symmetric positive definite; the penalty is `ridge * H`,
    which keeps `ridge` meaningful whatever the hidden size. The facts' fits are independent: a class a
    fact never saw has an all-zero target column, hence zero weights, and is masked in `scores`.
    """
    x = states.double().transpose(1, 2).contiguous()  # [F, L, n, H]: every reduction below is over trailing dims
    classes, labels = torch.unique(targets, sorted=True, return_inverse=True)
    onehot = torch.nn.functional.one_hot(labels, len(classes)).double()  # [F, n, C]
    present = onehot.amax(1) > 0
    bias = onehot.mean(1)
    mean = x.mean(2, keepdim=True)  # [F, L, 1, H]
    centred = x - mean
    scale = centred.pow(2).mean(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12)  # [F, L, 1, 1]
    z = centred / scale
    n, hidden = x.shape[2], x.shape[-1]
    penalty = ridge * hidden
    rhs = (onehot - bias[:, None])[:, None]  # [F, 1, n, C], the same for every layer
    zt = z.transpose(-1, -2)
    if n <= hidden:  # dual: alpha = (Z Z^T + p I)^-1 Y, W = Z^T alpha
        chol = torch.linalg.cholesky(z @ zt + penalty * torch.eye(n, dtype=x.dtype))
        weight = zt @ torch.cholesky_solve(rhs.expand(-1, z.shape[1], -1, -1), chol)
    else:  # primal: W = (Z^T Z + p I)^-1 Z^T Y
        chol = torch.linalg.cholesky(zt @ z + penalty * torch.eye(hidden, dtype=x.dtype))
        weight = torch.cholesky_solve(zt @ rhs, chol)  # [F, L, H, C]
    train = (z @ weight + bias[:, None, None]).masked_fill(~present[:, None, None], float("-inf"))
    return LinearProbe(classes=classes, present=present, mean=mean[:, :, 0], scale=scale[:, :, 0], weight=weight,
                       bias=bias, train_scores=train.transpose(1, 2))


def fit_probe(states: torch.Tensor, targets: torch.Tensor, ridge: float) -> LinearProbe:
    """`fit_probes` for one fact: states [n, L, H], targets [n]."""
    return fit_probes(states[None], targets[None], ridge)


def probe_candidates_many(probe: LinearProbe, states: torch.Tensor, targets: Sequence[int],
                          k: int) -> list[Candidates]:
    """Top-k classes per layer for each fact's target hidden states [F, L, H]; a rank is None where the
    target is none of the fact's classes. Orders are those of a stable sort (ties: lower token id first)."""
    counts = probe.n_classes
    scores = probe.scores(states)  # [F, L, C], -inf for foreign classes (ranked after all of the fact's own)
    wanted = torch.tensor(list(targets), dtype=torch.long)
    position = torch.searchsorted(probe.classes, wanted).clamp(max=len(probe.classes) - 1)
    valid = (probe.classes[position] == wanted) & probe.present.gather(1, position[:, None])[:, 0]
    tops, ranks = _candidate_lists(scores, min(int(k), max(counts)), position, valid, probe.classes)
    out = []
    for top, rank, count in zip(tops, ranks, counts):
        kk = min(int(k), count)
        out.append(Candidates(top_ids=[row[:kk] for row in top], bottom_ids=[[] for _ in top], rank_top=rank,
                              rank_bottom=[None] * len(top), k=kk))
    return out


def probe_candidates(probe: LinearProbe, states: torch.Tensor, target: int, k: int) -> Candidates:
    """Top-k classes per layer for one fact's target hidden states [L, H] (`probe` fitted for that fact)."""
    return probe_candidates_many(probe, states[None], [target], k)[0]


# ---------------------------------------------------------------------- attacks

# Bytes of float64 training states one probe fit may hold for a chunk of facts (a 7B model's 17 layers x 256
# records x 4096 dims are ~140 MB per fact; the tiny model's are well under 1 MB, so a whole group fits).
PROBE_CHUNK_BYTES = 256 * 2**20


def _lens_scores(c: Candidates) -> dict[str, bool | float]:
    return {"top1": c.top1, "topk": c.topk, "bottomk": c.bottomk, "topk_or_bottomk": c.topk_or_bottomk}


def _common_details(ctx: AttackContext, c: Candidates, layers: list[int], target: int,
                    bottom: bool) -> dict[str, Any]:
    details: dict[str, Any] = {"layers": layers, "k": c.k, "target_id": target,
                               "target_token": ctx.decode_tokens([target])[0], "rank_top": c.rank_top,
                               "top_ids": c.top_ids}
    budgets = c.budgets()
    if bottom:
        details.update(rank_bottom=c.rank_bottom, bottom_ids=c.bottom_ids)
    else:
        budgets = {key: budgets[key] for key in ("top1", "topk")}
    details["budgets"] = budgets
    return details


class _GroupAttack(Attack):
    """A whitebox attack computed for a group of facts at once: each fact's readouts are taken (in its slot),
    then the candidates of all of them come from a few batched tensor operations. `run` is a group of one,
    so a fact's outcome never depends on which facts it was attacked with."""

    def run(self, ctx: AttackContext) -> AttackOutcome:
        return self.run_many([ctx])[0]

    def run_many(self, contexts: Sequence[AttackContext], slot: Slot | None = None) -> list[AttackOutcome]:
        if not contexts:
            return []
        readouts = []
        for i, ctx in enumerate(contexts):
            with in_slot(slot, i):
                readouts.append(self.read(ctx))
        return self.score(contexts, readouts)

    @abc.abstractmethod
    def read(self, ctx: AttackContext) -> Any:
        """What this attack takes from the model for `ctx` (cached by the context, so free once prefetched)."""

    @abc.abstractmethod
    def score(self, contexts: Sequence[AttackContext], readouts: list[Any]) -> list[AttackOutcome]:
        """The outcomes of all `contexts` from their readouts, without touching the model."""


@dataclass
class _LensAttack(_GroupAttack):
    """Shared by hp, pd and pd2: they differ only in how many differences of the lens they take."""

    layers: str | list[int] | None = None
    k: int = 4

    kind: ClassVar[str] = "whitebox"
    order: ClassVar[int] = 0

    def __post_init__(self) -> None:
        self.layers = _check_layers(self.name, self.layers)
        self.k = check_int(self.name, "k", self.k, 1)

    def needs(self, ctx: AttackContext) -> Needs:
        return Needs(forward=True)

    def check_model(self, n_layers: int) -> None:
        resolve_layers(self.name, self.layers, n_layers, min_count=self.order + 1)

    def read(self, ctx: AttackContext) -> torch.Tensor:
        return ctx.lens()

    def score(self, contexts: Sequence[AttackContext], readouts: list[Any]) -> list[AttackOutcome]:
        layers = resolve_layers(self.name, self.layers, contexts[0].num_layers, min_count=self.order + 1)
        lens = torch.stack(readouts)  # [F, n_layers + 1, vocab]
        targets = [ctx.target_token_id() for ctx in contexts]
        found = logit_lens_candidates_many(layer_distributions(lens, layers, self.order), targets, self.k)
        # The target's rank at every hidden state, listed or not (only ranks: no candidates to take).
        everywhere = stable_rank(lens.double(), torch.tensor(targets)[:, None].expand(-1, lens.shape[1])).tolist() \
            if self.order == 0 else []
        # Which listed layers each distribution combines (a layer, a pair, a triple), for plots.
        combined = [layers[d:d + self.order + 1] for d in range(len(layers) - self.order)]
        out = []
        for f, (ctx, c, target) in enumerate(zip(contexts, found, targets)):
            details = _common_details(ctx, c, layers, target, bottom=True)
            details["distributions"] = combined
            if everywhere:
                details["rank_all_layers"] = everywhere[f]
            out.append(self.outcome(c.topk_or_bottomk, c.budgets()["topk_or_bottomk"], _lens_scores(c),
                                    ctx.decode_tokens(c.ids()), details))
        return out


@register_attack("hp")
@dataclass
class HeadProjection(_LensAttack):
    """Top-k / bottom-k of the logit lens at each listed layer."""

    order: ClassVar[int] = 0


@register_attack("pd")
@dataclass
class ProbabilityDelta(_LensAttack):
    """Top-k / bottom-k of the change in probability between consecutive listed layers."""

    order: ClassVar[int] = 1


@register_attack("pd2")
@dataclass
class ProbabilityDelta2(_LensAttack):
    """Top-k / bottom-k of the second difference of the probabilities over the listed layers."""

    order: ClassVar[int] = 2


@register_attack("probe")
@dataclass
class HiddenStateProbe(_GroupAttack):
    """A per-layer ridge probe trained on other facts of the edited model, read on the target.

    Classes are the answer first-tokens seen among the `n_train` training facts (a closed form with n
    classes; a full-vocabulary probe would be under-determined by so few facts), so a target whose token
    no training fact has cannot be recovered: `details.target_in_classes` says when that happened.
    Budget: min(k, classes) per layer. The probes of a group's facts are fitted together (batched
    Cholesky), each on its own training states.
    """

    layers: str | list[int] | None = None
    k: int = 4
    n_train: int = 64
    ridge: float = 1e-2

    kind: ClassVar[str] = "whitebox"

    def __post_init__(self) -> None:
        self.layers = _check_layers(self.name, self.layers)
        self.k = check_int(self.name, "k", self.k, 1)
        self.n_train = check_int(self.name, "n_train", self.n_train, 1)
        self.ridge = check_float(self.name, "ridge", self.ridge, 0.0, strict=True)

    def needs(self, ctx: AttackContext) -> Needs:
        return Needs(forward=True, probe_records=self.n_train)

    def check_model(self, n_layers: int) -> None:
        resolve_layers(self.name, self.layers, n_layers)

    def read(self, ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
        return (*ctx.probe_states(self.n_train), ctx.hidden())

    def score(self, contexts: Sequence[AttackContext], readouts: list[Any]) -> list[AttackOutcome]:
        layers = resolve_layers(self.name, self.layers, contexts[0].num_layers)
        out: list[AttackOutcome | None] = [None] * len(contexts)
        for chunk in _probe_chunks([r[0] for r in readouts], len(layers)):
            states = torch.stack([readouts[i][0][:, layers] for i in chunk])  # [F, n, L, H]
            targets = torch.stack([readouts[i][1] for i in chunk])  # [F, n]
            probe = fit_probes(states, targets, self.ridge)
            wanted = [contexts[i].target_token_id() for i in chunk]
            found = probe_candidates_many(probe, torch.stack([readouts[i][3][layers] for i in chunk]), wanted,
                                          self.k)
            train_pred = probe.classes[probe.train_scores.argmax(-1)]  # [F, n, L]
            accuracy = (train_pred == targets[..., None]).double().mean(1).tolist()
            counts = probe.n_classes
            for f, i in enumerate(chunk):
                ctx, c, ids = contexts[i], found[f], readouts[i][2]
                details = _common_details(ctx, c, layers, wanted[f], bottom=False)
                details.update(n_train=len(ids), train_records=ids, n_classes=counts[f],
                               target_in_classes=c.rank_top[0] is not None,  # ranked at every layer iff a class
                               train_accuracy=accuracy[f])
                scores: dict[str, bool | float] = {"top1": c.top1, "topk": c.topk}
                out[i] = self.outcome(c.topk, c.budgets()["topk"], scores, ctx.decode_tokens(c.ids(bottom=False)),
                                      details)
        return out  # type: ignore[return-value]


def _probe_chunks(states: list[torch.Tensor], n_layers: int) -> list[list[int]]:
    """Indices of facts fitted together: equal training-set sizes, at most `PROBE_CHUNK_BYTES` of states."""
    by_size: dict[int, list[int]] = {}
    for i, s in enumerate(states):
        by_size.setdefault(int(s.shape[0]), []).append(i)
    chunks = []
    for size, members in by_size.items():
        per_fact = max(1, size * n_layers * int(states[members[0]].shape[-1]) * 8)
        step = max(1, PROBE_CHUNK_BYTES // per_fact)
        chunks += [members[j:j + step] for j in range(0, len(members), step)]
    return chunks
