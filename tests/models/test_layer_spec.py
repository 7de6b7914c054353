"""Layer selections resolve the same way for every depth, and bad ones are one-line errors."""

from __future__ import annotations

import pytest

from mmunlearn.errors import ConfigError
from mmunlearn.models.layer_spec import resolve_layers


@pytest.mark.parametrize("spec, n, expected", [
    ("all", 4, [0, 1, 2, 3]),
    ("top_half", 5, [2, 3, 4]),
    ("top_third", 33, [22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32]),  # the reference's 22-32 on 32 layers
    ("last", 4, [3]),
    ("mid", 4, [2]),
    ("quarter", 4, [1]),  # the tiny model's edit: its output, hidden state 2, is the lowest of the top half
    ("quarter", 32, [8]),
    ("quarter", 3, [0]),
    ("unlok_edit", 32, [7]),
    ("unlok_edit", 40, [9]),
    ("unlok_edit", 2, [0]),
    ("1:3", 5, [1, 2]),
    ("-2:", 5, [3, 4]),
    ([0, -1], 4, [0, 3]),
    (2, 4, [2]),
])
def test_resolve_layers(spec, n, expected):
    assert resolve_layers(spec, n) == expected


@pytest.mark.parametrize("spec, match", [("middle", "unknown layer selection"), ([4], "out of range"),
                                         ("a:b", "not a slice"), ("3:1", "selects nothing"), ([], "empty"),
                                         ([True], "not an integer")])
def test_bad_layer_selections(spec, match):
    with pytest.raises(ConfigError, match=match) as exc:
        resolve_layers(spec, 4, what="edit.layers")
    assert "\n" not in str(exc.value) and "edit.layers" in str(exc.value)
