"""Layer selections written once for every model size: named ranges, index lists, `a:b` slices.

Hidden-state indices run 0 (embeddings) .. n_layers (last decoder layer); decoder-layer indices run
0 .. n_layers - 1. Negative indices count from the end, as in Python.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmunlearn.errors import ConfigError

NAMED = ("all", "top_half", "top_third", "last", "mid", "quarter", "unlok_edit")


def check_name(spec: str, what: str) -> None:
    """A selection given as a string names a range or is a slice: checked when a config is read, before the
    model (and so its layer count) is known."""
    if spec not in NAMED and ":" not in spec:
        raise ConfigError(f"{what} {spec!r} is no layer selection; use a list of hidden-state indices, one of "
                          f"{', '.join(NAMED)} or 'a:b'")


def resolve_layers(spec: str | int | Sequence[int], n: int, what: str = "layers") -> list[int]:
    """Indices in [0, n) for `spec`: a name in NAMED, an int, a list of ints, or a slice string 'a:b'.

    `mid` is the middle index (n // 2); `quarter` a quarter of the way up (n // 4: 1 of 4, 8 of 32), low enough
    that an edit there lies below every hidden state of the top half; `unlok_edit` is the reference editor's
    layer, n_layers // 4 - 1 of the decoder (7 of 32, 9 of 40).
    """
    if isinstance(spec, str):
        if spec == "all":
            return list(range(n))
        if spec == "top_half":
            return list(range(n // 2, n))
        if spec == "top_third":
            return list(range(n - max(1, n // 3), n))
        if spec == "last":
            return [n - 1]
        if spec == "mid":
            return [n // 2]
        if spec == "quarter":
            return [n // 4]
        if spec == "unlok_edit":
            return [max(0, (n + 1) // 4 - 1)]
        if ":" in spec:
            try:
                start, stop = (int(x) if x.strip() else None for x in spec.split(":", 1))
            except ValueError:
                raise ConfigError(f"{what}: {spec!r} is not a slice 'a:b' of integers") from None
            picked = list(range(n))[slice(start, stop)]
            if not picked:
                raise ConfigError(f"{what}: slice {spec!r} selects nothing of {n}")
            return picked
        raise ConfigError(f"{what}: unknown layer selection {spec!r}; use one of {', '.join(NAMED)}, "
                          "a list of indices or 'a:b'")
    values = [spec] if isinstance(spec, int) else list(spec)
    out = []
    for value in values:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{what}: {value!r} is not an integer index")
        if not -n <= value < n:
            raise ConfigError(f"{what}: index {value} out of range for {n}")
        out.append(value % n)
    if not out:
        raise ConfigError(f"{what}: empty layer list")
    return out
