"""One registry shape for every pluggable component (defenses, attacks, suites, judges, unlearning methods).

A component is a class (usually a dataclass whose init fields are its parameters) registered under a name;
configs find it by that name. Unknown names and parameters are one-line `ConfigError`s with a suggestion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from mmunlearn.config_checks import check_values, did_you_mean
from mmunlearn.errors import ConfigError

T = TypeVar("T")


def parameter_names(cls: type) -> list[str]:
    """A component's parameters: its dataclass init fields that are not private."""
    if not dataclasses.is_dataclass(cls):
        return []
    return [f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]


class Registry(Generic[T]):
    """Name -> class for one kind of component (`what`, e.g. "attack", used in error messages)."""

    def __init__(self, what: str, check: Callable[[str, type[T]], None] | None = None,
                 load: Callable[[], None] | None = None) -> None:
        self.what = what
        self._check = check
        self._load = load
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: make the class available to configs as `name` (sets `cls.name`)."""

        def wrap(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise ConfigError(f"{self.what} {name!r} already registered by {self._classes[name].__name__}")
            if self._check is not None:
                self._check(name, cls)
            cls.name = name  # type: ignore[attr-defined]
            self._classes[name] = cls
            return cls

        return wrap

    def unregister(self, name: str) -> None:
        """Forget `name` (tests that register a throwaway component clean up with this)."""
        self._classes.pop(name, None)

    def names(self) -> list[str]:
        """Registered names in registration order."""
        if self._load is not None:
            self._load()
        return list(self._classes)

    def classes(self) -> dict[str, type[T]]:
        self.names()
        return dict(self._classes)

    def cls(self, name: str) -> type[T]:
        known = self.names()
        if name not in self._classes:
            raise ConfigError(f"unknown {self.what} {name!r}; known: {', '.join(sorted(known))}"
                              f"{did_you_mean(name, known)}")
        return self._classes[name]

    def create(self, name: str, **params: Any) -> T:
        """An instance of `name` with `params`; an unknown parameter is a one-line error."""
        cls = self.cls(name)
        self.check_params(name, cls, params)
        if dataclasses.is_dataclass(cls):
            check_values(cls, params, f"{self.what} {name!r}", component=True)
        return cls(**params)

    def check_params(self, name: str, cls: type, params: Sequence[str] | dict[str, Any]) -> None:
        fields = parameter_names(cls)
        for key in params:
            if key not in fields:
                raise ConfigError(f"{self.what} {name!r}: unknown parameter {key!r}; known: "
                                  f"{', '.join(fields) or 'none'}{did_you_mean(key, fields)}")


class FactoryRegistry(Generic[T]):
    """Name -> factory function for components built from options rather than dataclass fields
    (paraphrasers, embedders: `factory(model=None, **options)`)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: make `factory` available as `name`."""

        def add(factory: Callable[..., T]) -> Callable[..., T]:
            self._factories[name] = factory
            return factory

        return add

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._factories:
            known = sorted(self._factories)
            raise ConfigError(f"unknown {self.what} {name!r}; known: {', '.join(known)}{did_you_mean(name, known)}")
        return self._factories[name]

    def names(self) -> list[str]:
        return sorted(self._factories)
