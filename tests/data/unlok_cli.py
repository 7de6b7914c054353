"""Runs `mmunlearn unlok ...` in-process, as the CLI parses it and reports its errors."""

from __future__ import annotations

import argparse
import sys

from mmunlearn.data.commands import add_unlok_data_parsers
from mmunlearn.errors import MMUnlearnError


def run(argv: list[str]) -> int:
    """Parse under an `unlok` group as the CLI does, and report `MMUnlearnError`s as the CLI does."""
    parser = argparse.ArgumentParser(prog="mmunlearn")
    sub = parser.add_subparsers(dest="command", required=True)
    add_unlok_data_parsers(sub.add_parser("unlok").add_subparsers(dest="unlok_cmd", required=True))
    args = parser.parse_args(["unlok", *argv])
    try:
        args.func(args)
    except MMUnlearnError as exc:
        print(f"mmunlearn: error: {exc}", file=sys.stderr)
        return 2
    return 0


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]
