"""`mmunlearn list`: every registered component, with the parameters a config would run it with.

Registries know the classes and their defaults; the config knows which components a run uses and what it
overrides. Reading both here lets a user see, before running anything, what `unlok.attacks=[...]` or
`+safety.judge_params.llamaguard.path=...` would change, in the names the config uses.
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mmunlearn.errors import ConfigError
from mmunlearn.registry import did_you_mean

VALUE_WIDTH = 48  # longer parameter values (prompt templates, marker lists) are cut to this many characters
LINE_WIDTH = 110


@dataclass(frozen=True)
class Entry:
    name: str
    used: bool  # in the config's own list (the default run, unless overridden)
    tag: str  # attack kind, suite modality, model family ...
    params: dict[str, Any]
    summary: str


@dataclass(frozen=True)
class Section:
    kind: str
    where: str  # the config keys that pick and parameterise these components
    entries: list[Entry]


def summary_of(obj: Any) -> str:
    """The first paragraph of a docstring on one line ("" for none, or a dataclass's generated signature)."""
    doc = inspect.getdoc(obj) or ""
    if doc.startswith(f"{getattr(obj, '__name__', '')}("):
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def _node(cfg: DictConfig, dotted: str) -> Any:
    value = OmegaConf.select(cfg, dotted)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _fields(cls: type, given: dict[str, Any]) -> dict[str, Any]:
    """Each parameter's value: the config's, else the default, else `<required>`."""
    out: dict[str, Any] = {}
    if not dataclasses.is_dataclass(cls):
        return out
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        if f.name in given:
            out[f.name] = given[f.name]
        elif f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = "<required>"
    return out


def _registry_section(kind: str, where: str, classes: dict[str, type], used: list[str],
                      params: dict[str, Any], tag: Callable[[type], str] = lambda cls: "",
                      summary: Callable[[type], str] = summary_of) -> Section:
    return Section(kind, where, [Entry(name, name in used, tag(cls), _fields(cls, params.get(name) or {}),
                                       summary(cls)) for name, cls in classes.items()])


def _defenses(cfg: DictConfig) -> Section:
    from mmunlearn.defenses.losses import DEFENSES

    return _registry_section("defenses", "unlok.defenses, unlok.defense_params", DEFENSES.classes(),
                             _node(cfg, "unlok.defenses") or [], _node(cfg, "unlok.defense_params") or {})


def _attacks(cfg: DictConfig) -> Section:
    from mmunlearn.attacks.registry import ATTACKS

    return _registry_section("attacks", "unlok.attacks, unlok.attack_params", ATTACKS.classes(),
                             _node(cfg, "unlok.attacks") or [], _node(cfg, "unlok.attack_params") or {},
                             lambda cls: cls.kind)


def _methods(cfg: DictConfig) -> Section:
    from mmunlearn.defenses.dataset_unlearning import METHODS

    defs = _node(cfg, "safety.run_defs") or {}
    used = [(defs.get(run) or {}).get("loss") for run in _node(cfg, "safety.runs") or []]
    return _registry_section("methods", "safety.run_defs.<run>.loss, safety.loss_params", METHODS.classes(),
                             [u for u in used if u], _node(cfg, "safety.loss_params") or {})


def _suites(cfg: DictConfig) -> Section:
    from mmunlearn.safety.suites import SUITES

    return _registry_section("suites", "safety.suites, safety.suite_params", SUITES.classes(),
                             _node(cfg, "safety.suites") or [], _node(cfg, "safety.suite_params") or {},
                             lambda cls: cls.modality, lambda cls: cls.pairing)  # the published pairing it keeps


def _judges(cfg: DictConfig) -> Section:
    from mmunlearn.judges.base import JUDGES

    return _registry_section("judges", "safety.judges, +safety.judge_params", JUDGES.classes(),
                             _node(cfg, "safety.judges") or [], _node(cfg, "safety.judge_params") or {})


def _loaders(cfg: DictConfig) -> Section:
    from mmunlearn.safety.loaders import available_loaders, get_loader

    data = _node(cfg, "safety.data") or {}
    used = []
    for role in ("forget", "retain", "attacks", "benign"):
        given = data.get(role) or []
        used += [s.get("loader") for s in (given if isinstance(given, list) else [given]) if isinstance(s, dict)]
    entries = []
    for name in available_loaders():
        loader = get_loader(name)
        options = {p.name: p.default for p in inspect.signature(loader).parameters.values()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY}
        entries.append(Entry(name, name in used, "", options, summary_of(loader)))
    return Section("loaders", "safety.data.<role>.loader, .options (roles: forget, retain, attacks, benign)", entries)


def _yaml_comment(name: str) -> str:
    """The opening comment of a packaged model config, on one line."""
    from importlib import resources

    text = resources.files("mmunlearn.conf").joinpath("model", f"{name}.yaml").read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return " ".join(lines)


def _models(cfg: DictConfig) -> Section:
    from importlib import resources

    from mmunlearn.models.adapters import known_families
    from mmunlearn.models.registry import available_run_configs, run_config

    chosen = {_node(cfg, "unlok.model"), _node(cfg, "safety.model")}
    embedded = sorted(e.name[:-5] for e in resources.files("mmunlearn.conf").joinpath("model").iterdir()
                      if e.name.endswith(".yaml") and e.name[:-5] not in available_run_configs())
    kind = _node(cfg, "model.kind") or "tiny"
    entries = [Entry(name, name == kind and None in chosen, "embedded, model=" + name, {}, _yaml_comment(name))
               for name in embedded]
    for name in available_run_configs():
        run = run_config(name)
        entries.append(Entry(name, name in chosen, run.family, {"path": run.path, "dtype": run.dtype,
                                                               "batch_size": run.batch_size}, _yaml_comment(name)))
    return Section("models", "model=<embedded>; unlok.model, safety.model: a run config below, a directory or a hub "
                   f"id of a family: {', '.join(known_families())}", entries)


SECTIONS: dict[str, Callable[[DictConfig], Section]] = {
    "defenses": _defenses, "attacks": _attacks, "methods": _methods, "suites": _suites, "judges": _judges,
    "loaders": _loaders, "models": _models,
}


def catalog(cfg: DictConfig, kinds: list[str] | None = None) -> list[Section]:
    """The sections of `kinds` (all when None); an unknown kind is a one-line error with a suggestion."""
    for kind in kinds or []:
        if kind not in SECTIONS:
            raise ConfigError(f"unknown component kind {kind!r}; known: {', '.join(SECTIONS)}"
                              f"{did_you_mean(kind, SECTIONS)}")
    return [SECTIONS[kind](cfg) for kind in (kinds or list(SECTIONS))]


def _show(value: Any) -> str:
    text = value if isinstance(value, str) and value == "<required>" else repr(list(value) if isinstance(
        value, tuple) else value)
    text = " ".join(text.split())
    return text if len(text) <= VALUE_WIDTH else text[:VALUE_WIDTH - 3] + "..."


def render(sections: list[Section]) -> str:
    """Plain text: per section, one block per component (`*` = used by this config), wrapped to `LINE_WIDTH`."""
    lines: list[str] = []
    for section in sections:
        lines += textwrap.wrap(f"{section.kind} ({section.where}; * = in this config)", LINE_WIDTH,
                               subsequent_indent="  ")
        width = max(len(e.name) for e in section.entries)
        for e in section.entries:
            head = f"  {'*' if e.used else ' '} {e.name:<{width}}  "
            indent = " " * len(head)
            text = f"{'[' + e.tag + '] ' if e.tag else ''}{e.summary}"
            lines += textwrap.wrap(text, LINE_WIDTH, initial_indent=head, subsequent_indent=indent) or [head.rstrip()]
            if e.params:
                lines += textwrap.wrap("  ".join(f"{k}={_show(v)}" for k, v in e.params.items()), LINE_WIDTH,
                                       initial_indent=indent + "- ", subsequent_indent=indent + "  ",
                                       break_long_words=False, break_on_hyphens=False)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
