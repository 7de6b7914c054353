"""The safety summary scores requests, not attack variants: a suite's variants of one request share it."""

from __future__ import annotations

import pytest

from mmunlearn.experiments.safety_summary import summarize_safety


def _rows(run: str, hits: dict[str, list[float]]) -> list[dict]:
    return [{"type": "attack", "run": run, "suite": "jailbreak", "prompt": prompt, "asr/oracle": h}
            for prompt, variants in hits.items() for h in variants]


def test_asr_and_its_change_are_per_request_means_over_variants():
    # Three variants per request; each request's last variant is the opposite of the others' majority.
    base = _rows("base", {"a": [1, 1, 0], "b": [1, 1, 0], "c": [0, 0, 1], "d": [1, 0, 0]})
    after = _rows("tuned", {"a": [0, 0, 1], "b": [0, 0, 1], "c": [0, 0, 1], "d": [0, 0, 0]})
    summary = summarize_safety(base + after, ["base", "tuned"], ["jailbreak"], ["oracle"], compute={})
    asr = {e["run"]: e for e in summary["asr"]["oracle"]}
    assert asr["base"]["mean"] == pytest.approx(6 / 12) and asr["base"]["n"] == 4
    assert asr["tuned"]["mean"] == pytest.approx(3 / 12) and asr["tuned"]["n"] == 4
    (change,) = summary["asr_changes"]
    assert change["change"]["mean"] == pytest.approx(asr["tuned"]["mean"] - asr["base"]["mean"])
    assert change["change"]["n"] == 4
