"""`mmunlearn list` (every registered component with the parameters a config runs it with) and
`mmunlearn config` (the resolved config after the checks `run` makes)."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from mmunlearn.attacks.registry import ATTACKS
from mmunlearn.catalog import SECTIONS, catalog, summary_of
from mmunlearn.cli import main
from mmunlearn.config import load_config
from mmunlearn.defenses.dataset_unlearning import METHODS
from mmunlearn.defenses.losses import DEFENSES
from mmunlearn.judges.base import JUDGES
from mmunlearn.models.registry import available_run_configs
from mmunlearn.safety.loaders import available_loaders
from mmunlearn.safety.suites import SUITES


def _blocks(text: str) -> dict[str, tuple[bool, str]]:
    """"section/name" -> (marked as in this config, the block's text) for every component of a listing."""
    out: dict[str, tuple[bool, str]] = {}
    section = key = None
    for line in text.splitlines():
        match = re.match(r"^  ([* ]) (\S+)\s", line)
        if line and not line.startswith(" "):
            section = line.split()[0]
        elif match:
            key = f"{section}/{match.group(2)}"
            out[key] = (match.group(1) == "*", line)
        elif key and line.startswith("    "):
            out[key] = (out[key][0], out[key][1] + "\n" + line)
    return out


def test_list_names_every_registered_component_and_marks_the_default_run(capsys):
    assert main(["list"]) == 0
    blocks = _blocks(capsys.readouterr().out)
    registered = {"defenses": DEFENSES.names(), "attacks": ATTACKS.names(), "methods": METHODS.names(),
                  "suites": SUITES.names(), "judges": JUDGES.names(), "loaders": available_loaders(),
                  "models": [*available_run_configs(), "tiny", "smol"]}
    assert set(blocks) == {f"{kind}/{name}" for kind, names in registered.items() for name in names}
    cfg = load_config()
    used = {"defenses": cfg.unlok.defenses, "attacks": cfg.unlok.attacks, "methods": ["yao", "sft"],
            "suites": cfg.safety.suites, "judges": cfg.safety.judges, "models": ["tiny"]}
    assert {k for k, (marked, _) in blocks.items() if marked} == {f"{kind}/{n}" for kind, names in used.items()
                                                                for n in names}
    assert "n_train=256" in blocks["attacks/probe"][1]  # the config's value, not the class default 64
    assert "path=<required>" in blocks["judges/llamaguard"][1]


def test_list_follows_overrides(capsys):
    assert main(["list", "attacks", "unlok.attacks=[hp,probe]", "unlok.attack_params.hp.k=7"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("attacks (") and "suites (" not in out
    blocks = _blocks(out)
    assert {k for k, (marked, _) in blocks.items() if marked} == {"attacks/hp", "attacks/probe"}
    assert "k=7" in blocks["attacks/hp"][1] and "[whitebox]" in blocks["attacks/hp"][1]
    assert main(["list", "judges", "+safety.judge_params.llamaguard.path=org/guard"]) == 0
    assert "path='org/guard'" in _blocks(capsys.readouterr().out)["judges/llamaguard"][1]


def test_every_component_says_what_it_does():
    for section in catalog(load_config()):
        for entry in section.entries:
            assert entry.summary, (section.kind, entry.name)
    for cls in DEFENSES.classes().values():  # a dataclass without a docstring gets a generated signature
        assert summary_of(cls) and not summary_of(cls).startswith(cls.__name__ + "(")


def test_unknown_kind_is_one_line_with_a_suggestion(capsys):
    assert main(["list", "atacks"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown component kind 'atacks'" in err[0] and "did you mean 'attacks'" in err[0]
    assert set(SECTIONS) == {"defenses", "attacks", "methods", "suites", "judges", "loaders", "models"}


def test_config_prints_the_checked_resolved_config(capsys):
    overrides = ["unlok.n_facts=7", "safety.suites=[text,dataset]"]
    assert main(["config", *overrides]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed == load_config(overrides)
    assert printed.unlok.n_facts == 7 and "${" not in OmegaConf.to_yaml(printed)


@pytest.mark.parametrize("args, message", [
    (["config", "safety.judges=[orcale]"], "did you mean 'oracle'"),
    (["config", "--tracks", "unlok", "unlok.attacks=[hp,prob]"], "did you mean 'probe'"),
    (["config", "--tracks", "unlock"], "unknown track(s) ['unlock']"),
])
def test_config_fails_in_one_line_as_run_would(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
