"""Defense objectives as small loss functions, registered by name (open-unlearning's loss-only methods).

Every defense sees the same `EditTerms` (computed once per step by the editor from one forward pass) and
overrides only its loss. Formulas follow UnLOK-VQA (Patil et al. 2025) with `s` the summed log-probability
of the defense's target tokens given (image, prompt):

* fact erasure        L = mean exp(s_answer)                   (the answer's probability, not its log)
* empty response      L = -mean s_empty                        (NLL of "I don't know")
* error injection     L = -mean s_alt                          (NLL of the alternative answer)
* head projection     L = mean_l relu(log p_l(t) - log p_l^(k)) + relu(log p_l^(-k) - log p_l(t))  (layer range),
                      p_l the logit-lens distribution at the last prompt position, t the answer's first token,
                      p^(k) / p^(-k) the k-th largest / smallest probability (t leaves top-k and bottom-k)
* max-entropy         L = -mean_l H(p_l)                        over a layer range
* input rephrasing    fact erasure over prompt variants (prefixes before the question)
* gradient ascent     L = mean s_answer (+ retain NLL)
* GradDiff            L = mean s_answer + w * retain NLL
* NPO                 L = -(2/beta) mean log sigmoid(-beta (s_answer - s_ref)) + w * retain NLL
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch
import torch.nn.functional as F

from mmunlearn.config_checks import at_least
from mmunlearn.errors import ConfigError
from mmunlearn.models import layer_spec
from mmunlearn.registry import Registry

# Prefixes of the input-rephrasing defense (disjoint from the prefix attack's).
REPHRASE_PREFIXES = ("", "A new study suggests. ", "The following is a. ", "I've always been. ",
                     "The following blog post. ")


@dataclass
class EditTerms:
    """What one forward pass over the edit examples gives the losses.

    `target_logprob[b]` sums the log-probs of row b's target tokens (end-of-turn excluded);
    `lens_logprobs` is [B, n_layers_selected, vocab] at the last prompt position (None unless asked);
    `target_token[b]` is the first target token; `ref_logprob` the frozen model's `target_logprob`
    (NPO); `retain_nll` the mean NLL of the retain examples (None without retain data).
    """

    target_logprob: torch.Tensor
    target_token: torch.Tensor
    lens_logprobs: torch.Tensor | None = None
    ref_logprob: torch.Tensor | None = None
    retain_nll: torch.Tensor | None = None


@dataclass
class Defense:
    """A defense: which target it trains toward, which terms it needs, and its loss."""

    name: ClassVar[str] = ""
    target: ClassVar[str] = "answer"  # answer | alt | empty
    needs_lens: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    retain_weight: float = field(default=0.0, metadata=at_least(0))

    def loss(self, terms: EditTerms) -> torch.Tensor:
        raise NotImplementedError

    def total(self, terms: EditTerms) -> torch.Tensor:
        loss = self.loss(terms)
        if self.retain_weight and terms.retain_nll is not None:
            loss = loss + self.retain_weight * terms.retain_nll
        return loss

    def prompt_prefixes(self) -> tuple[str, ...]:
        """Texts put before the question, one edit row each ("" = the question as asked)."""
        return ("",)

    def params(self) -> dict[str, float | int | str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


DEFENSES: Registry[Defense] = Registry("defense")
register_defense = DEFENSES.register


def known_defenses() -> list[str]:
    return sorted(DEFENSES.names())


def get_defense(name: str, **params: object) -> Defense:
    """The defense `name` with its parameters; one-line errors for unknown names or parameters."""
    return DEFENSES.create(name, **params)


# ---------------------------------------------------------------------- the losses


def margin_loss(logp: torch.Tensor, token: torch.Tensor, k: int) -> torch.Tensor:
    """Push token out of each layer's top-k and bottom-k: mean over rows and layers of the two hinges.

    The hinges compare log-probabilities: the constraint (rank of t outside the top k and the bottom k) is
    the same as with probabilities, but a pushed-down token cannot hide in a tie of underflowed zeros at
    the bottom, and the gradient does not vanish with the probability.
    """
    vocab = logp.shape[-1]
    if not 1 <= k <= vocab:
        raise ConfigError(f"head_projection: k={k} must be in [1, vocab size {vocab}]")
    l_t = logp.gather(-1, token[:, None, None].expand(-1, logp.shape[1], 1))[..., 0]
    kth_top = logp.topk(k, dim=-1).values[..., -1]
    kth_bottom = logp.topk(k, dim=-1, largest=False).values[..., -1]
    return (F.relu(l_t - kth_top) + F.relu(kth_bottom - l_t)).mean()


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each distribution, given as log-probabilities over the last axis."""
    return -(logp.exp() * logp).sum(-1)


@register_defense("fact_erasure")
@dataclass
class FactErasure(Defense):
    """Fact erasure: lower the probability of the true answer (its mean over the edit prompts)."""

    def loss(self, terms: EditTerms) -> torch.Tensor:
        return terms.target_logprob.exp().mean()


@register_defense("empty_response")
@dataclass
class EmptyResponse(Defense):
    """Empty response: teach the configured empty answer (`unlok.empty_answer`) in place of the true one."""

    target: ClassVar[str] = "empty"

    def loss(self, terms: EditTerms) -> torch.Tensor:
        return -terms.target_logprob.mean()


@register_defense("error_injection")
@dataclass
class ErrorInjection(Defense):
    """Error injection: teach a wrong answer (the record's alternative) in place of the true one."""

    target: ClassVar[str] = "alt"

    def loss(self, terms: EditTerms) -> torch.Tensor:
        return -terms.target_logprob.mean()


@dataclass
class LayerRangeDefense(Defense):
    """Defenses reading the logit lens over `layers` (hidden-state indices; negative count from the end)."""

    needs_lens: ClassVar[bool] = True
    layers: str | int | tuple[int, ...] = "top_half"

    def __post_init__(self) -> None:
        if isinstance(self.layers, str):  # the range depends on the model and is checked when the defense runs
            layer_spec.check_name(self.layers, f"defense {self.name!r}: parameter 'layers'")


@register_defense("head_projection")
@dataclass
class HeadProjection(LayerRangeDefense):
    """Head projection: push the true answer out of the logit lens's top-k and bottom-k at every listed layer
    (the defense against the whitebox attacks that read those layers)."""

    k: int = field(default=100, metadata=at_least(1))

    def loss(self, terms: EditTerms) -> torch.Tensor:
        if terms.lens_logprobs is None:
            raise ConfigError("head_projection needs the logit lens; the editor did not compute it")
        return margin_loss(terms.lens_logprobs, terms.target_token, self.k)


@register_defense("max_entropy")
@dataclass
class MaxEntropy(LayerRangeDefense):
    """Max-entropy: make the logit lens's distribution at every listed layer as flat as possible."""

    def loss(self, terms: EditTerms) -> torch.Tensor:
        if terms.lens_logprobs is None:
            raise ConfigError("max_entropy needs the logit lens; the editor did not compute it")
        return -entropy(terms.lens_logprobs).mean()


@register_defense("input_rephrasing")
@dataclass
class InputRephrasing(FactErasure):
    """Input rephrasing: fact erasure over the prompt with each prefix, so paraphrased inputs are covered."""

    prefixes: tuple[str, ...] = REPHRASE_PREFIXES

    def __post_init__(self) -> None:
        if not self.prefixes:
            raise ConfigError("defense 'input_rephrasing': parameter 'prefixes' needs at least one prefix "
                              "(\"\" is the prompt as it is)")

    def prompt_prefixes(self) -> tuple[str, ...]:
        return tuple(self.prefixes)


@register_defense("gradient_ascent")
@dataclass
class GradientAscent(Defense):
    """Gradient ascent: raise the true answer's negative log-likelihood, unbounded (no retain term by default)."""

    def loss(self, terms: EditTerms) -> torch.Tensor:
        return terms.target_logprob.mean()


@register_defense("grad_diff")
@dataclass
class GradDiff(Defense):
    """Gradient difference: gradient ascent on the fact plus the likelihood of other facts (`retain_weight`)."""

    retain_weight: float = field(default=1.0, metadata=at_least(0))

    def loss(self, terms: EditTerms) -> torch.Tensor:
        return terms.target_logprob.mean()


@register_defense("npo")
@dataclass
class NPO(Defense):
    """Negative preference optimisation (Zhang et al., 2024): a bounded gradient ascent against the unedited
    model, plus the likelihood of other facts (`retain_weight`)."""

    needs_reference: ClassVar[bool] = True
    retain_weight: float = field(default=1.0, metadata=at_least(0))
    beta: float = field(default=0.1, metadata=at_least(0, strict=True))

    def loss(self, terms: EditTerms) -> torch.Tensor:
        if terms.ref_logprob is None:
            raise ConfigError("npo needs the reference model's log-probs; the editor did not compute them")
        ratio = terms.target_logprob - terms.ref_logprob
        return -(2.0 / self.beta) * F.logsigmoid(-self.beta * ratio).mean()


UNLOK_DEFENSES = ("fact_erasure", "empty_response", "error_injection", "head_projection", "max_entropy",
                  "input_rephrasing")
