"""Attacks by name: the `Attack` interface, its `AttackOutcome`, and the registry configs pick them from.

An attack is a dataclass whose fields are its parameters, so a config's keys are checked against them and
a typo fails as one line naming the attack and the parameter, never as a traceback deep inside a run.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import importlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from mmunlearn.errors import ConfigError
from mmunlearn.registry import Registry

if TYPE_CHECKING:
    from mmunlearn.attacks.context import AttackContext, Needs

# Candidates (decoded tokens or sampled answers) kept per outcome; the counts behind the scores are exact.
MAX_STORED_CANDIDATES = 128

KINDS = ("whitebox", "blackbox")

# Enters the model variant of fact i of a group (e.g. its edit delta); None = one model for all facts.
Slot = Callable[[int], AbstractContextManager[Any]]


def in_slot(slot: Slot | None, i: int) -> AbstractContextManager[Any]:
    """`slot(i)`, or the model as it is."""
    return contextlib.nullcontext() if slot is None else slot(i)


@dataclass
class AttackOutcome:
    """What one attack recovered for one fact.

    `success` is the headline: for the logit-lens attacks (hp, pd, pd2) it is the top-k OR bottom-k hit at
    any listed layer (budget 2k per distribution), for the probe its top-k hit, for the blackbox attacks
    whether any sample contains an accepted answer. `budget` is the number of candidates that headline was
    allowed; `scores` holds the finer hits and rates, `details` whatever is needed to plot or audit them.
    """

    attack: str
    kind: str
    success: bool
    budget: int
    scores: dict[str, bool | float] = field(default_factory=dict)
    candidates: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A plain dict `json.dumps` accepts (the run store writes it as is)."""
        return {"attack": self.attack, "kind": self.kind, "success": bool(self.success), "budget": int(self.budget),
                "scores": dict(self.scores), "candidates": list(self.candidates[:MAX_STORED_CANDIDATES]),
                "details": self.details}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttackOutcome:
        return cls(attack=data["attack"], kind=data["kind"], success=bool(data["success"]),
                   budget=int(data["budget"]), scores=dict(data.get("scores", {})),
                   candidates=list(data.get("candidates", [])), details=dict(data.get("details", {})))


class Attack(abc.ABC):
    """One way of recovering a deleted fact; subclasses are dataclasses whose fields are the parameters."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""

    @abc.abstractmethod
    def run(self, ctx: AttackContext) -> AttackOutcome:
        """Attack `ctx.record` on `ctx.adapter`'s current weights."""

    def run_many(self, contexts: Sequence[AttackContext], slot: Slot | None = None) -> list[AttackOutcome]:
        """Attack the fact of each context; `slot(i)` is entered around whatever reads context i's model
        (each fact of a group may have its own model variant). Attacks that can score a whole group at once
        (the whitebox ones) override this; outcomes never depend on the group."""
        out = []
        for i, ctx in enumerate(contexts):
            with in_slot(slot, i):
                out.append(self.run(ctx))
        return out

    def needs(self, ctx: AttackContext) -> Needs:
        """What `run` will read from the model for `ctx` (prefetched in merged calls when declared; what is
        not declared is computed by the context on first use)."""
        from mmunlearn.attacks.context import Needs

        return Needs()

    def check_model(self, n_layers: int) -> None:  # noqa: B027 - a hook: most attacks run on any layer count
        """Raise `ConfigError` if this attack cannot run on a model with `n_layers` decoder layers (checked before
        any work where the layer count is known without loading the model)."""

    def params(self) -> dict[str, Any]:
        """The parameters as given (after validation), for the outcome's record."""
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    def outcome(self, success: bool, budget: int, scores: dict[str, bool | float], candidates: Sequence[str],
                details: dict[str, Any]) -> AttackOutcome:
        """An outcome stamped with this attack's name, kind and parameters."""
        return AttackOutcome(attack=self.name, kind=self.kind, success=bool(success), budget=int(budget),
                             scores=scores, candidates=list(candidates)[:MAX_STORED_CANDIDATES],
                             details={"params": self.params(), **details})


# ---------------------------------------------------------------------- parameter checks


def check_int(attack: str, name: str, value: Any, minimum: int) -> int:
    """An integer parameter >= minimum (bools refused: `k: true` is a config mistake)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"attack {attack!r}: parameter {name!r} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(attack: str, name: str, value: Any, minimum: float, strict: bool = False) -> float:
    """A number parameter >= minimum (> minimum when `strict`)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
        (value > minimum if strict else value >= minimum)
    if not ok:
        bound = ">" if strict else ">="
        raise ConfigError(f"attack {attack!r}: parameter {name!r} must be a number {bound} {minimum}, got {value!r}")
    return float(value)


def check_strings(attack: str, name: str, value: Any) -> list[str]:
    """A list of strings (a Hydra ListConfig included); a bare string is refused, not split into letters."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"attack {attack!r}: parameter {name!r} must be a list of strings, got {value!r}")
    items = list(value)
    if not all(isinstance(v, str) for v in items):
        raise ConfigError(f"attack {attack!r}: parameter {name!r} must be a list of strings, got {items!r}")
    return items


# ---------------------------------------------------------------------- registry

_MODULES = ("mmunlearn.attacks.whitebox", "mmunlearn.attacks.blackbox")


def _check_kind(name: str, cls: type[Attack]) -> None:
    if cls.kind not in KINDS:
        raise ConfigError(f"attack {name!r}: kind must be one of {', '.join(KINDS)}, got {cls.kind!r}")


def _load() -> None:
    for module in _MODULES:
        importlib.import_module(module)


ATTACKS: Registry[Attack] = Registry("attack", check=_check_kind, load=_load)
register_attack = ATTACKS.register


def known_attacks(kind: str | None = None) -> list[str]:
    """Registered attack names, optionally of one kind."""
    return sorted(n for n, cls in ATTACKS.classes().items() if kind is None or cls.kind == kind)


def get_attack(name: str, **params: Any) -> Attack:
    """The attack `name` with `params`; unknown names and parameters fail as one-line `ConfigError`s."""
    return ATTACKS.create(name, **params)
