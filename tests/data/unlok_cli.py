"""Runs `mmunlearn unlok ...` in-process through the CLI's own entry point (parsing and error reporting)."""

from __future__ import annotations

from mmunlearn.cli import main


def run(argv: list[str]) -> int:
    """`mmunlearn unlok <argv>` as the command line runs it; returns its exit code."""
    return main(["unlok", *argv])


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]
