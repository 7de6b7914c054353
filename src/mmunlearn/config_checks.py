"""Config values checked against the type hints of the dataclass they fill, before any work starts.

A YAML override can put any value under any key (`unlok.seed=abc`, `edit.rank=1.5`, `defenses=5`). Each
settings dataclass already says what its fields take in its type hints; `check_values` holds a config's
values against them (and against `bounds` in a field's metadata) and names the key of the first one that
does not fit, so the CLI prints one line instead of a traceback from deep inside a run minutes later.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mmunlearn.errors import ConfigError


def at_least(low: float, strict: bool = False, high: float | None = None) -> dict[str, Any]:
    """Field metadata for a number's range: `field(default=1, metadata=at_least(1))`."""
    return {"bounds": (low, strict, high)}


def fits(hint: Any, value: Any) -> bool:
    """Whether `value` (plain YAML data: numbers, strings, lists, dicts, None) can stand for type `hint`.

    An int takes whole numbers only and a float any number but NaN; a bool is neither (`k: true` is a
    mistake, not 1); a tuple or list hint takes a YAML list; unresolvable or unusual hints take anything.
    """
    if hint is Any or isinstance(hint, (str, typing.ForwardRef, typing.TypeVar)):
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(fits(arg, value) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list, Sequence) or hint in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(fits(a, v) for a, v in zip(args, value))
        return not args or all(fits(args[0], v) for v in value)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return isinstance(value, Mapping) and (len(args) < 2 or all(fits(args[1], v) for v in value.values()))
    return True  # other classes (a path, a nested settings object) are built and checked by their callers


@functools.cache
def field_hints(cls: type) -> dict[str, Any]:
    """Each dataclass field's type hint, resolved one by one (a hint naming something only imported for type
    checking stays a string, which `fits` accepts)."""
    namespace = dict(vars(sys.modules[cls.__module__]))
    hints = {}
    for klass in reversed(cls.__mro__):
        for name, hint in getattr(klass, "__annotations__", {}).items():
            if isinstance(hint, str):
                try:
                    hint = eval(hint, namespace, dict(vars(klass)))  # noqa: S307 (the class's own annotation)
                except Exception:  # noqa: BLE001 (an unresolvable hint is checked by nobody, as before)
                    pass
            hints[name] = hint
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def describe(hint: Any) -> str:
    """A hint as a user reads it: `an integer`, `a list of strings`, `an integer or null`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(describe(a) for a in args)
    if hint is type(None) or hint is None:
        return "null"
    if origin in (tuple, list, Sequence):
        return f"a list of {PLURALS.get(args[0], describe(args[0]))}" if args else "a list"
    if origin in (dict, Mapping):
        return "a mapping"
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    return WORDS.get(hint, getattr(hint, "__name__", str(hint)))


WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def check_values(cls: type, values: Mapping[str, Any], where: str, component: bool = False) -> None:
    """Raise `ConfigError` for the first value that does not fit field `key` of dataclass `cls` (its type hint,
    then `bounds` metadata), naming it `config <where>.<key>` (`config <key>` at the top level), or
    `<where>: parameter '<key>'` for a registered component (`where` = "defense 'npo'", worded as the
    components' own checks are). Keys that are not fields are left to the caller."""
    hints = field_hints(cls)
    bounds = {f.name: f.metadata.get("bounds") for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in hints:
            continue
        name = f"{where}: parameter {key!r}" if component else f"config {where + '.' if where else ''}{key}:"
        if not fits(hints[key], value):
            expected = "must be" if component else "expected"
            raise ConfigError(f"{name} {expected} {describe(hints[key])}, got {value!r}")
        limit = bounds[key]
        if limit is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            low, strict, high = limit
            if (value <= low if strict else value < low) or (high is not None and value > high):
                span = f"{'>' if strict else '>='} {low}" + (f" and <= {high}" if high is not None else "")
                raise ConfigError(f"{name} must be {span}, got {value!r}")


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """"; did you mean 'x'?" for the closest known word, or "" when none is close."""
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_known(keys: Sequence[str] | Mapping[str, Any], known: Sequence[str], where: str) -> None:
    """A key no code reads is a typo (`+unlok.n_fact=3` would otherwise run every fact): one line naming it,
    the section's keys and the closest one."""
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise ConfigError(f"config{' ' + where if where else ''}: unknown key(s) {unknown}; known: "
                          f"{', '.join(sorted(known))}{did_you_mean(unknown[0], known)}")
