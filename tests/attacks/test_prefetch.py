"""Prefetching every attack's readouts in merged calls changes nothing but the number of calls."""

from __future__ import annotations

from mmunlearn.attacks import AttackContext, get_attack
from mmunlearn.attacks.prefetch import prefetch

ATTACKS = {"hp": {"k": 2}, "pd": {"k": 2}, "pd2": {"k": 2}, "probe": {"k": 2, "n_train": 5},
           "question_paraphrase": {"n_samples": 2}, "image_paraphrase": {"n_samples": 2},
           "multimodal": {"n_samples": 2, "n_paraphrases": 2}}


class Counting:
    """The adapter, counting the calls that reach the model."""

    def __init__(self, adapter) -> None:
        self._adapter = adapter
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        value = getattr(self._adapter, name)
        if name in ("generate", "sample", "hidden_states", "hidden_and_lens"):
            def counted(*args, **kwargs):
                self.calls.append(name)
                return value(*args, **kwargs)
            return counted
        return value


def _outcomes(adapter, benchmark, prefetched: bool) -> list[dict]:
    attacks = [get_attack(name, **params) for name, params in ATTACKS.items()]
    contexts = [AttackContext(adapter, benchmark, r, seed=4) for r in benchmark.records[:4]]
    if prefetched:
        prefetch(contexts, attacks)
    return [a.run(ctx).to_json() for ctx in contexts for a in attacks]


def test_prefetched_attacks_equal_lazy_ones_in_three_merged_calls(micro_adapter, micro_benchmark):
    lazy_adapter, merged_adapter = Counting(micro_adapter), Counting(micro_adapter)
    lazy = _outcomes(lazy_adapter, micro_benchmark, prefetched=False)
    merged = _outcomes(merged_adapter, micro_benchmark, prefetched=True)
    assert merged == lazy
    assert merged_adapter.calls == ["hidden_and_lens", "hidden_states", "sample"]
    assert lazy_adapter.calls.count("sample") == 4 * 3  # one per blackbox attack and fact
    assert all(o["candidates"] and o["budget"] for o in merged if o["kind"] == "blackbox")


def test_prefetch_skips_what_is_cached(micro_adapter, micro_benchmark):
    adapter = Counting(micro_adapter)
    attacks = [get_attack("hp"), get_attack("question_paraphrase", n_samples=1)]
    contexts = [AttackContext(adapter, micro_benchmark, r) for r in micro_benchmark.records[:2]]
    prefetch(contexts, attacks)
    prefetch(contexts, attacks)
    assert adapter.calls == ["hidden_and_lens", "sample"]
