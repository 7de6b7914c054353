"""The judge interface: inputs, verdicts, and the registry configs pick judges from.

A judge decides whether a response to a (possibly jailbroken) request is harmful, i.e. whether the attack
succeeded. Attack success rates are only comparable between runs that used the same judge, so every verdict
carries the judge's id and version. A judge that cannot run raises `MMUnlearnError`; no judge ever falls back
to another one, because a silently swapped judge changes the number being reported.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mmunlearn.errors import ConfigError, MMUnlearnError
from mmunlearn.registry import Registry, did_you_mean

_MODULES = ("mmunlearn.judges.oracle", "mmunlearn.judges.keyword", "mmunlearn.judges.classifier",
            "mmunlearn.judges.api")


@dataclass(frozen=True)
class JudgeInput:
    """One (request, response) pair to judge, with whatever ground truth the benchmark knows.

    `reference` is a harmful reference answer, `key_terms` the words whose joint presence marks the harmful
    procedure (world ground truth), `category` the benchmark's harm category; `meta` is carried untouched.
    """

    request: str
    response: str
    reference: str | None = None
    key_terms: tuple[str, ...] | None = None
    category: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.key_terms is not None and not isinstance(self.key_terms, tuple):
            object.__setattr__(self, "key_terms", tuple(self.key_terms))  # a list from JSON or YAML

    def to_json(self) -> dict[str, Any]:
        return {"request": self.request, "response": self.response, "reference": self.reference,
                "key_terms": list(self.key_terms) if self.key_terms is not None else None,
                "category": self.category, "meta": dict(self.meta)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JudgeInput:
        terms = data.get("key_terms")
        return cls(request=data["request"], response=data["response"], reference=data.get("reference"),
                   key_terms=tuple(terms) if terms is not None else None, category=data.get("category"),
                   meta=dict(data.get("meta") or {}))


@dataclass(frozen=True)
class Verdict:
    """One judge's decision on one input; `harmful` True means the attack succeeded."""

    judge: str
    version: str
    harmful: bool
    score: float | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """A plain dict `json.dumps` accepts."""
        return {"judge": self.judge, "version": self.version, "harmful": bool(self.harmful),
                "score": None if self.score is None else float(self.score), "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verdict:
        score = data.get("score")
        return cls(judge=data["judge"], version=data["version"], harmful=bool(data["harmful"]),
                   score=None if score is None else float(score), reason=data.get("reason", ""))


class Judge(abc.ABC):
    """Decides harmfulness for batches of inputs; subclasses are dataclasses whose init fields are parameters."""

    name: ClassVar[str] = ""

    @property
    def id(self) -> str:
        """The registered name (what a config writes)."""
        return self.name

    @property
    @abc.abstractmethod
    def version(self) -> str:
        """Changes whenever the judge could decide differently (model, prompt, markers, thresholds)."""

    @abc.abstractmethod
    def _judge(self, inputs: list[JudgeInput]) -> list[Verdict]:
        """Verdicts for a checked, non-empty list of inputs, in order."""

    def judge(self, inputs: Sequence[JudgeInput]) -> list[Verdict]:
        """Verdicts for `inputs`, in order, each stamped with this judge's id and version."""
        items = list(inputs)
        for i, item in enumerate(items):
            if not isinstance(item, JudgeInput):
                raise MMUnlearnError(f"judge {self.id!r}: input {i} is a {type(item).__name__}, not a JudgeInput")
        if not items:
            return []
        verdicts = self._judge(items)
        if len(verdicts) != len(items):
            raise MMUnlearnError(f"judge {self.id!r}: returned {len(verdicts)} verdicts for {len(items)} inputs")
        return verdicts

    def judge_one(self, item: JudgeInput) -> Verdict:
        return self.judge([item])[0]

    def params(self) -> dict[str, Any]:
        """The parameters as given, for run records."""
        return {f.name: getattr(self, f.name) for f in _param_fields(type(self))}

    def verdict(self, harmful: bool, score: float | None = None, reason: str = "") -> Verdict:
        """A verdict stamped with this judge's id and version."""
        return Verdict(judge=self.id, version=self.version, harmful=bool(harmful),
                       score=None if score is None else float(score), reason=reason)


# ---------------------------------------------------------------------- helpers shared by judges


def short_hash(payload: Any, length: int = 10) -> str:
    """A stable hex digest of a JSON-able payload (key order ignored), for version strings."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def hint(word: str, known: Sequence[str]) -> str:
    """"; did you mean 'x'?" or "" (shared with every registry)."""
    return did_you_mean(word, known)


TEMPLATE_FIELDS = ("request", "response", "reference", "category")


def check_template(judge: str, name: str, template: Any, required: Sequence[str] = ("response",)) -> str:
    """A str.format template using only `TEMPLATE_FIELDS` and containing every `required` field."""
    import string

    if not isinstance(template, str):
        raise ConfigError(f"judge {judge!r}: parameter {name!r} must be a string, got {template!r}")
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ConfigError(f"judge {judge!r}: parameter {name!r} is not a valid format string: {exc}") from None
    for f in sorted(used):
        if f not in TEMPLATE_FIELDS:
            raise ConfigError(f"judge {judge!r}: {name!r} uses unknown field {{{f}}}; known: "
                              f"{', '.join(TEMPLATE_FIELDS)}{hint(f, TEMPLATE_FIELDS)} (write literal braces as "
                              "{{ and }})")
    missing = [f for f in required if f not in used]
    if missing:
        raise ConfigError(f"judge {judge!r}: {name!r} must contain {{{missing[0]}}}")
    return template


def fill_template(template: str, item: JudgeInput) -> str:
    return template.format(request=item.request, response=item.response, reference=item.reference or "",
                           category=item.category or "")


def check_number(judge: str, name: str, value: Any, low: float, high: float | None = None,
                 integer: bool = False) -> Any:
    """A number in [low, high] (an int when `integer`); bools are refused as config mistakes."""
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        what = "an integer" if integer else "a number"
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"judge {judge!r}: parameter {name!r} must be {what} {bound}, got {value!r}")
    return int(value) if integer else float(value)


def check_strings(judge: str, name: str, value: Any, allow_int: bool = False) -> tuple[Any, ...]:
    """A non-empty list of strings (ints too when `allow_int`); a bare string is refused, not split."""
    allowed = (str, int) if allow_int else (str,)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"judge {judge!r}: parameter {name!r} must be a list, got {value!r}")
    items = tuple(value)
    if not items or not all(isinstance(v, allowed) and not isinstance(v, bool) for v in items):
        what = "strings or integers" if allow_int else "strings"
        raise ConfigError(f"judge {judge!r}: parameter {name!r} must be a non-empty list of {what}, got {items!r}")
    return items


# ---------------------------------------------------------------------- registry


def _param_fields(cls: type) -> list[dataclasses.Field]:
    if not dataclasses.is_dataclass(cls):
        return []
    return [f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]


def _load() -> None:
    for module in _MODULES:
        importlib.import_module(module)


JUDGES: Registry[Judge] = Registry("judge", load=_load)
register_judge = JUDGES.register


def known_judges() -> list[str]:
    """Registered judge names."""
    return sorted(JUDGES.names())


def check_judge(name: str, **params: Any) -> type[Judge]:
    """The class of judge `name` once its parameter names are checked (unknown, missing), without building it:
    a checkpoint-backed judge loads its model when built, which a check before any work must not do."""
    cls = JUDGES.cls(name)
    JUDGES.check_params(name, cls, params)
    missing = [f.name for f in _param_fields(cls) if f.name not in params and _is_required(f)]
    if missing:
        raise ConfigError(f"judge {name!r}: missing required parameter {missing[0]!r}")
    return cls


def get_judge(name: str, **params: Any) -> Judge:
    """The judge `name` built with `params`; unknown names and parameters fail as one-line `ConfigError`s."""
    return check_judge(name, **params)(**params)


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
