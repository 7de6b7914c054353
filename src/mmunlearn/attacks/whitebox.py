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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mmunlearn.attacks.context import AttackContext, Needs
from mmunlearn.attacks.registry import Attack, AttackOutcome, check_float, check_int, register_attack
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
        if layers not in layer_spec.NAMED and ":" not in layers:
            raise ConfigError(f"attack {attack!r}: parameter 'layers' {layers!r} is no layer selection; use a list "
                              f"of hidden-state indices, one of {', '.join(layer_spec.NAMED)} or 'a:b'")
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

    top_ids: torch.Tensor  # [D, k]
    bottom_ids: torch.Tensor  # [D, k] (empty second dim when bottom-k is not read)
    rank_top: list[int | None]  # per distribution; None where the target is not a class of the distribution
    rank_bottom: list[int | None]
    k: int

    @property
    def n_distributions(self) -> int:
        return int(self.top_ids.shape[0])

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
        out: list[int] = []
        for d in range(self.n_distributions):
            row = self.top_ids[d].tolist() + (self.bottom_ids[d].tolist() if bottom else [])
            out.extend(i for i in row if i not in out)
        return out


def layer_distributions(logprobs: torch.Tensor, layers: Sequence[int], order: int) -> torch.Tensor:
    """Probabilities of the listed layers (order 0), their first (1) or second (2) difference: [D, vocab]."""
    probs = logprobs[list(layers)].double().exp()
    return torch.diff(probs, n=order, dim=0) if order else probs


def _ranks(order: torch.Tensor, target: int) -> list[int | None]:
    """Position of `target` in each row of `order` [D, n]; None in rows without it."""
    ranks: list[int | None] = [None] * order.shape[0]
    for row, col in (order == target).nonzero().tolist():
        ranks[row] = int(col)
    return ranks


def logit_lens_candidates(probs: torch.Tensor, target: int, k: int) -> Candidates:
    """Top-k / bottom-k of each row of `probs` [D, vocab] (probabilities or their differences)."""
    if probs.dim() != 2 or probs.shape[0] == 0:
        raise ConfigError(f"logit-lens candidates need a [distributions, vocab] tensor, got {tuple(probs.shape)}")
    k = min(int(k), int(probs.shape[1]))
    down = torch.sort(probs, dim=-1, descending=True, stable=True).indices
    up = torch.sort(probs, dim=-1, stable=True).indices
    return Candidates(top_ids=down[:, :k], bottom_ids=up[:, :k], rank_top=_ranks(down, target),
                      rank_bottom=_ranks(up, target), k=k)


@dataclass(frozen=True)
class LinearProbe:
    """Ridge probes, one per listed layer, from a centred and scaled hidden state to the classes (token ids)."""

    classes: torch.Tensor  # [C] token ids
    mean: torch.Tensor  # [L, H]
    scale: torch.Tensor  # [L, 1]
    weight: torch.Tensor  # [L, H, C]
    bias: torch.Tensor  # [C]

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        """Class scores [..., L, C] of hidden states [..., L, H]."""
        z = (states.double() - self.mean) / self.scale
        return torch.einsum("...lh,lhc->...lc", z, self.weight) + self.bias


def fit_probe(states: torch.Tensor, targets: torch.Tensor, ridge: float) -> LinearProbe:
    """Closed-form ridge regression of one-hot targets on states [n, L, H], per layer.

    States are centred and divided by one RMS per layer (not per feature: near-constant features would be
    blown up to unit variance and dominate the target's reading). Solved by Cholesky in the smaller of the
    primal (H x H) and dual (n x n) forms, both symmetric positive definite; the penalty is `ridge * H`,
    which keeps `ridge` meaningful whatever the hidden size.
    """
    x = states.double()
    classes, labels = torch.unique(targets, sorted=True, return_inverse=True)
    onehot = torch.nn.functional.one_hot(labels, len(classes)).double()
    bias = onehot.mean(0)
    mean = x.mean(0)
    scale = (x - mean).pow(2).mean(dim=(0, 2)).sqrt().clamp_min(1e-12)[:, None]
    z = ((x - mean) / scale).transpose(0, 1)  # [L, n, H]
    n, hidden = x.shape[0], x.shape[-1]
    penalty = ridge * hidden
    rhs = (onehot - bias).expand(len(z), -1, -1)
    if n <= hidden:  # dual: alpha = (Z Z^T + p I)^-1 Y, W = Z^T alpha
        chol = torch.linalg.cholesky(z @ z.transpose(1, 2) + penalty * torch.eye(n, dtype=x.dtype))
        weight = z.transpose(1, 2) @ torch.cholesky_solve(rhs.contiguous(), chol)
    else:  # primal: W = (Z^T Z + p I)^-1 Z^T Y
        chol = torch.linalg.cholesky(z.transpose(1, 2) @ z + penalty * torch.eye(hidden, dtype=x.dtype))
        weight = torch.cholesky_solve(z.transpose(1, 2) @ rhs, chol)  # [L, H, C]
    return LinearProbe(classes=classes, mean=mean, scale=scale, weight=weight, bias=bias)


def probe_candidates(probe: LinearProbe, states: torch.Tensor, target: int, k: int) -> Candidates:
    """Top-k classes per layer for the target's hidden states [L, H]; ranks None if it is no class."""
    k = min(int(k), len(probe.classes))
    order = probe.classes[torch.sort(probe.scores(states), dim=-1, descending=True, stable=True).indices]
    return Candidates(top_ids=order[:, :k], bottom_ids=order[:, :0], rank_top=_ranks(order, target),
                      rank_bottom=[None] * order.shape[0], k=k)


# ---------------------------------------------------------------------- attacks


def _lens_scores(c: Candidates) -> dict[str, bool | float]:
    return {"top1": c.top1, "topk": c.topk, "bottomk": c.bottomk, "topk_or_bottomk": c.topk_or_bottomk}


def _common_details(ctx: AttackContext, c: Candidates, layers: list[int], bottom: bool) -> dict[str, Any]:
    target = ctx.target_token_id()
    details: dict[str, Any] = {"layers": layers, "k": c.k, "target_id": target,
                               "target_token": ctx.decode_tokens([target])[0], "rank_top": c.rank_top,
                               "top_ids": c.top_ids.tolist()}
    budgets = c.budgets()
    if bottom:
        details.update(rank_bottom=c.rank_bottom, bottom_ids=c.bottom_ids.tolist())
    else:
        budgets = {key: budgets[key] for key in ("top1", "topk")}
    details["budgets"] = budgets
    return details


@dataclass
class _LensAttack(Attack):
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

    def run(self, ctx: AttackContext) -> AttackOutcome:
        layers = resolve_layers(self.name, self.layers, ctx.num_layers, min_count=self.order + 1)
        lens = ctx.lens()
        c = logit_lens_candidates(layer_distributions(lens, layers, self.order), ctx.target_token_id(), self.k)
        details = _common_details(ctx, c, layers, bottom=True)
        # Which listed layers each distribution combines (a layer, a pair, a triple), for plots.
        details["distributions"] = [layers[d:d + self.order + 1] for d in range(c.n_distributions)]
        if self.order == 0:
            everywhere = logit_lens_candidates(lens.double(), ctx.target_token_id(), 1)
            details["rank_all_layers"] = everywhere.rank_top
        return self.outcome(c.topk_or_bottomk, c.budgets()["topk_or_bottomk"], _lens_scores(c),
                            ctx.decode_tokens(c.ids()), details)


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
class HiddenStateProbe(Attack):
    """A per-layer ridge probe trained on other facts of the edited model, read on the target.

    Classes are the answer first-tokens seen among the `n_train` training facts (a closed form with n
    classes; a full-vocabulary probe would be under-determined by so few facts), so a target whose token
    no training fact has cannot be recovered: `details.target_in_classes` says when that happened.
    Budget: min(k, classes) per layer.
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

    def run(self, ctx: AttackContext) -> AttackOutcome:
        layers = resolve_layers(self.name, self.layers, ctx.num_layers)
        states, targets, ids = ctx.probe_states(self.n_train)
        probe = fit_probe(states[:, layers], targets, self.ridge)
        target = ctx.target_token_id()
        c = probe_candidates(probe, ctx.hidden()[layers], target, self.k)
        train_pred = probe.classes[probe.scores(states[:, layers]).argmax(-1)]  # [n, L]
        details = _common_details(ctx, c, layers, bottom=False)
        details.update(n_train=len(ids), train_records=ids, n_classes=len(probe.classes),
                       target_in_classes=bool((probe.classes == target).any()),
                       train_accuracy=(train_pred == targets[:, None]).double().mean(0).tolist())
        scores: dict[str, bool | float] = {"top1": c.top1, "topk": c.topk}
        return self.outcome(c.topk, c.budgets()["topk"], scores, ctx.decode_tokens(c.ids(bottom=False)), details)
