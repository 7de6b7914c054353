"""Whitebox attacks: candidate logic on hand-made tensors, the context on a stub model, the micro model end to end."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
from PIL import Image

from mmunlearn.attacks import AttackContext, get_attack
from mmunlearn.attacks.whitebox import (
    default_layers,
    fit_probe,
    fit_probes,
    layer_distributions,
    logit_lens_candidates,
    probe_candidates,
    probe_candidates_many,
    resolve_layers,
    stable_rank,
    stable_top,
    top_and_ranks,
)
from mmunlearn.data.records import Benchmark, FactRecord
from mmunlearn.errors import ConfigError, MMUnlearnError
from mmunlearn.models.adapters.base import EncodedRow, VLMInput

# Hand-made logit lens of a 4-layer model over a 6-token vocabulary; the target is token 2.
# Layer 3 ranks it first, layer 4 (the output) last: the edit suppressed it only at the end.
TARGET = 2
PROBS = torch.tensor([
    [1 / 6] * 6,
    [1 / 6] * 6,
    [0.10, 0.30, 0.25, 0.15, 0.15, 0.05],
    [0.10, 0.20, 0.40, 0.10, 0.15, 0.05],
    [0.60, 0.20, 0.01, 0.09, 0.05, 0.05],
], dtype=torch.float64)


class StubTokenizer:
    def decode(self, ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids)


class StubImages:
    def load(self, ref: str) -> Image.Image:
        image = Image.new("RGB", (4, 4))
        image.info["ref"] = ref
        return image


class StubAdapter:
    """A model whose readouts are given: per question, hidden states and logit lens; answers -> token ids."""

    def __init__(self, num_layers: int, answer_ids: dict[str, int], hidden: dict[str, torch.Tensor],
                 lens: dict[str, torch.Tensor] | None = None) -> None:
        self.num_layers = num_layers
        self.answer_ids = answer_ids
        self._hidden = hidden
        self._lens = lens or {}
        self.tokenizer = StubTokenizer()
        self.forwards = 0
        self.rows_seen = 0

    def encode(self, item: VLMInput, for_generation: bool) -> EncodedRow:
        return EncodedRow([1, 7, self.answer_ids[item.answer or ""], 3], 2)

    def hidden_and_lens(self, items: list[VLMInput]) -> tuple[torch.Tensor, torch.Tensor]:
        self.forwards += 1
        return (torch.stack([self._hidden[i.question] for i in items]),
                torch.stack([self._lens[i.question] for i in items]))

    def hidden_states(self, items: list[VLMInput]) -> torch.Tensor:
        self.forwards += 1
        self.rows_seen += len(items)
        return torch.stack([self._hidden[i.question] for i in items])


def _record(i: int, answer: str) -> FactRecord:
    return FactRecord(id=f"r{i}", image=f"img{i}", question=f"q{i}", answer=answer, alt_answer="other")


def _lens_context() -> tuple[AttackContext, StubAdapter]:
    records = [_record(0, "two"), _record(1, "one")]
    adapter = StubAdapter(4, {"two": TARGET, "one": 1}, hidden={"q0": torch.zeros(5, 3), "q1": torch.ones(5, 3)},
                          lens={"q0": PROBS.log().float(), "q1": PROBS.log().float()})
    return AttackContext(adapter, Benchmark("stub", records, StubImages()), records[0], seed=0), adapter


# ---------------------------------------------------------------------- layers


def test_default_layers_are_the_top_half_widened_to_the_minimum() -> None:
    assert default_layers(4) == [2, 3, 4]
    assert default_layers(32) == list(range(16, 33))
    assert default_layers(2) == [1, 2]
    assert default_layers(2, min_count=3) == [0, 1, 2]


def test_resolve_layers_accepts_negative_indices_and_sorts() -> None:
    assert resolve_layers("hp", [-1, 0, -3], 4) == [0, 2, 4]
    assert resolve_layers("hp", None, 4) == [2, 3, 4]


def test_named_layer_selections_count_hidden_states() -> None:
    assert resolve_layers("hp", "top_half", 4) == [2, 3, 4]
    assert resolve_layers("hp", "all", 4) == [0, 1, 2, 3, 4]
    assert resolve_layers("hp", "1:3", 4) == [1, 2]
    assert resolve_layers("hp", "last", 4) == [4]
    with pytest.raises(ConfigError, match="layer selection"):
        get_attack("hp", layers="middle")


@pytest.mark.parametrize(("layers", "min_count", "words"), [
    ([5], 1, "out of range"), ([-6], 1, "out of range"), ([4, -1], 1, "twice"), ([3], 2, "at least 2"),
])
def test_resolve_layers_errors_are_one_line(layers: list[int], min_count: int, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        resolve_layers("pd", layers, 4, min_count)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- pure candidate logic


def test_head_projection_candidates_by_hand() -> None:
    dists = layer_distributions(PROBS.log(), [2, 3, 4], order=0)
    c = logit_lens_candidates(dists, TARGET, k=1)
    assert c.top_ids == [[1], [2], [0]]
    assert c.bottom_ids == [[5], [5], [2]]
    assert c.rank_top == [1, 0, 5] and c.rank_bottom == [4, 5, 0]
    assert c.top1 and c.topk and c.bottomk and c.topk_or_bottomk
    assert c.budgets() == {"top1": 3, "topk": 3, "bottomk": 3, "topk_or_bottomk": 6}
    assert logit_lens_candidates(dists, TARGET, k=2).budgets()["topk_or_bottomk"] == 12


def test_probability_delta_is_a_first_difference_in_probability_space() -> None:
    dists = layer_distributions(PROBS.log(), [2, 3, 4], order=1)
    expected = torch.tensor([[0.0, -0.10, 0.15, -0.05, 0.0, 0.0], [0.50, 0.0, -0.39, -0.01, -0.10, 0.0]],
                            dtype=torch.float64)
    assert torch.allclose(dists, expected, atol=1e-12)
    c = logit_lens_candidates(dists, TARGET, k=1)
    assert c.top_ids == [[2], [0]] and c.bottom_ids == [[1], [2]]
    assert c.top1 and c.topk and c.bottomk
    assert c.budgets() == {"top1": 2, "topk": 2, "bottomk": 2, "topk_or_bottomk": 4}


def test_second_difference_finds_the_target_only_from_the_bottom() -> None:
    dists = layer_distributions(PROBS.log(), [2, 3, 4], order=2)
    assert torch.allclose(dists, torch.tensor([[0.50, 0.10, -0.54, 0.04, -0.10, 0.0]], dtype=torch.float64),
                          atol=1e-12)
    c = logit_lens_candidates(dists, TARGET, k=1)
    assert c.top_ids == [[0]] and c.bottom_ids == [[2]]
    assert not c.topk and c.bottomk and c.topk_or_bottomk
    assert c.rank_top == [5] and c.rank_bottom == [0]
    assert c.budgets()["topk_or_bottomk"] == 2


def test_ties_break_towards_the_lower_token_id_so_ranks_match_candidates() -> None:
    c = logit_lens_candidates(torch.full((1, 5), 0.2), target=3, k=3)
    assert c.top_ids == [[0, 1, 2]] and c.rank_top == [3] and not c.topk
    assert c.bottom_ids == [[0, 1, 2]] and not c.bottomk


def test_k_larger_than_the_vocabulary_is_clamped() -> None:
    c = logit_lens_candidates(torch.tensor([[0.5, 0.3, 0.2]]), target=2, k=10)
    assert c.k == 3 and c.topk and c.budgets()["topk"] == 3


@pytest.mark.parametrize("seed", range(5))
def test_stable_top_and_rank_equal_a_stable_sort_with_ties(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (6, 3, 17), generator=g).double()  # many ties
    scores[0, 0] = 1.0  # a row of one value
    scores[1, 1, ::2] = float("-inf")
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    for k in (1, 3, 17):
        assert torch.equal(stable_top(scores, k), order[..., :k])
    index = torch.randint(0, 17, (6, 3), generator=g)
    expected = (order == index[..., None]).int().argmax(-1)
    assert torch.equal(stable_rank(scores, index), expected)
    for rows in (scores, scores[:1, :2]):  # the top-k route and the full sort for a few rows
        n = rows.shape[0]
        top, rank = top_and_ranks(rows, 3, index[:n, :rows.shape[1]])
        assert torch.equal(top, order[:n, :rows.shape[1], :3]) and torch.equal(rank, expected[:n, :rows.shape[1]])


# ---------------------------------------------------------------------- the attacks on a stub model


def test_one_forward_pass_serves_lens_and_hidden() -> None:
    ctx, adapter = _lens_context()
    assert ctx.target_token_id() == TARGET and adapter.forwards == 0
    ctx.lens()
    ctx.hidden()
    for name in ("hp", "pd", "pd2"):
        get_attack(name).run(ctx)
    assert adapter.forwards == 1


@pytest.mark.parametrize(("name", "success", "budget", "scores"), [
    ("hp", True, 6, {"top1": True, "topk": True, "bottomk": True, "topk_or_bottomk": True}),
    ("pd", True, 4, {"top1": True, "topk": True, "bottomk": True, "topk_or_bottomk": True}),
    ("pd2", True, 2, {"top1": False, "topk": False, "bottomk": True, "topk_or_bottomk": True}),
])
def test_lens_attacks_on_a_known_model(name: str, success: bool, budget: int, scores: dict[str, bool]) -> None:
    ctx, _ = _lens_context()
    out = get_attack(name, k=1).run(ctx)
    assert (out.attack, out.kind, out.success, out.budget) == (name, "whitebox", success, budget)
    assert out.scores == scores
    assert out.details["layers"] == [2, 3, 4] and out.details["target_token"] == "<2>"
    assert "<2>" in out.candidates
    json.dumps(out.to_json())


def test_head_projection_reports_ranks_at_every_layer_and_only_listed_layers_count() -> None:
    ctx, _ = _lens_context()
    out = get_attack("hp", k=1, layers=[4]).run(ctx)
    assert out.details["rank_all_layers"] == [2, 2, 1, 0, 5]
    assert out.details["rank_top"] == [5] and out.details["rank_bottom"] == [0]
    assert out.success and not out.scores["topk"] and out.budget == 2


def test_layer_out_of_range_fails_at_run_time_as_config_error() -> None:
    ctx, _ = _lens_context()
    with pytest.raises(ConfigError, match="out of range"):
        get_attack("hp", layers=[7]).run(ctx)


# ---------------------------------------------------------------------- probe


def _planted(n_per_class: int, classes: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Hidden states [n, 3, 12]: layer 0 noise only, layers 1 and 2 carry a class direction plus noise."""
    g = torch.Generator().manual_seed(seed)
    directions = {c: torch.randn(12, generator=g) for c in [*classes, 13]}
    labels = torch.tensor([c for c in classes for _ in range(n_per_class)])
    noise = 0.3 * torch.randn(len(labels), 3, 12, generator=g)
    signal = torch.stack([directions[int(c)] for c in labels])
    states = noise + torch.tensor([0.0, 1.0, 2.0])[None, :, None] * signal[:, None, :] + 5.0
    return states, labels, directions


def test_fit_probe_recovers_a_planted_linear_signal() -> None:
    states, labels, directions = _planted(20, [5, 9, 11])
    probe = fit_probe(states, labels, ridge=1e-2)
    assert probe.classes.tolist() == [5, 9, 11]
    target = 5.0 + torch.tensor([0.0, 1.0, 2.0])[:, None] * directions[9][None, :]
    c = probe_candidates(probe, target, target=9, k=1)
    assert c.rank_top[1:] == [0, 0] and c.top1 and c.topk
    assert c.budgets() == {"top1": 3, "topk": 3, "bottomk": 3, "topk_or_bottomk": 6}
    unseen = probe_candidates(probe, target, target=13, k=3)
    assert unseen.rank_top == [None, None, None] and not unseen.topk


@pytest.mark.parametrize("n_per_class", [2, 20])  # 6 rows (the dual form) and 60 rows (the primal) of 12 dims
def test_fit_probes_equal_the_textbook_ridge_solution(n_per_class: int) -> None:
    states, labels, _ = _planted(n_per_class, [5, 9, 11])
    states = states * 40.0 + 300.0  # large means: the primal form's uncentred Gram must still cancel them
    probe = fit_probe(states, labels, ridge=1e-2)
    x = states.double().transpose(0, 1)  # [L, n, H]
    centred = x - x.mean(1, keepdim=True)
    z = centred / centred.pow(2).mean(dim=(1, 2), keepdim=True).sqrt()
    onehot = torch.nn.functional.one_hot(torch.unique(labels, return_inverse=True)[1]).double()
    y = onehot - onehot.mean(0)
    eye = torch.eye(z.shape[-1], dtype=torch.float64)
    weight = torch.linalg.solve(z.transpose(1, 2) @ z + 1e-2 * z.shape[-1] * eye, z.transpose(1, 2) @ y)
    assert torch.allclose(probe.weight[0], weight, atol=1e-9, rtol=1e-7)
    train = (z @ weight + onehot.mean(0)).transpose(0, 1)  # [n, L, C]
    assert torch.allclose(probe.train_scores[0], train, atol=1e-9, rtol=1e-7)
    assert torch.allclose(probe.scores(states[None])[0], train, atol=1e-9, rtol=1e-7)


def _probe_context(target_class: int) -> tuple[AttackContext, StubAdapter]:
    states, labels, directions = _planted(20, [5, 9, 11], seed=1)
    names = {5: "five", 9: "nine", 11: "eleven", 13: "thirteen"}
    records = [_record(0, names[target_class])] + [_record(i + 1, names[int(c)]) for i, c in enumerate(labels)]
    hidden = {f"q{i + 1}": h for i, h in enumerate(states)}
    hidden["q0"] = 5.0 + torch.tensor([0.0, 1.0, 2.0])[:, None] * directions[target_class][None, :]
    lens = {"q0": torch.zeros(3, 16).log_softmax(-1)}
    adapter = StubAdapter(2, {v: k for k, v in names.items()}, hidden, lens)
    return AttackContext(adapter, Benchmark("stub", records, StubImages()), records[0], seed=0), adapter


def test_probe_attack_reads_the_target_from_other_facts() -> None:
    ctx, adapter = _probe_context(9)
    out = get_attack("probe", k=1, n_train=40).run(ctx)
    assert out.success and out.scores == {"top1": True, "topk": True}
    assert out.budget == 2 and out.details["layers"] == [1, 2]
    assert out.details["n_train"] == 40 and "r0" not in out.details["train_records"]
    assert out.details["target_in_classes"] and min(out.details["train_accuracy"]) > 0.9
    assert out.candidates == ["<9>"]
    assert adapter.forwards == 2  # the target's pass and one batched pass over the training records


def test_probe_cannot_name_an_answer_no_training_fact_has() -> None:
    ctx, _ = _probe_context(13)
    out = get_attack("probe", k=2, n_train=60).run(ctx)
    assert not out.success and not out.details["target_in_classes"]
    assert out.details["rank_top"] == [None, None] and out.budget == 4


def test_probe_records_are_seeded_and_exclude_the_target() -> None:
    ctx, _ = _probe_context(9)
    first = [r.id for r in ctx.probe_records(10)]
    again = [r.id for r in AttackContext(ctx.adapter, ctx.benchmark, ctx.record, seed=0).probe_records(10)]
    other = [r.id for r in AttackContext(ctx.adapter, ctx.benchmark, ctx.record, seed=1).probe_records(10)]
    assert first == again and first != other and "r0" not in first
    assert len(ctx.probe_records(1000)) == 60


def test_state_cache_is_shared_between_contexts_of_one_model() -> None:
    ctx, adapter = _probe_context(9)
    ctx.probe_states(30)
    seen = adapter.rows_seen
    twin = AttackContext(adapter, ctx.benchmark, ctx.record, seed=0, state_cache=ctx.state_cache)
    twin.probe_states(30)
    assert adapter.rows_seen == seen == 30


def test_probe_without_other_records_is_a_one_line_error() -> None:
    records = [_record(0, "five")]
    adapter = StubAdapter(2, {"five": 5}, {"q0": torch.zeros(3, 4)}, {"q0": torch.zeros(3, 8)})
    ctx = AttackContext(adapter, Benchmark("stub", records, StubImages()), records[0])
    with pytest.raises(MMUnlearnError, match="no other record"):
        get_attack("probe").run(ctx)


# ---------------------------------------------------------------------- the micro model


def test_hidden_and_lens_match_the_separate_readouts(micro_adapter, micro_benchmark) -> None:
    record = micro_benchmark.records[0]
    items = [VLMInput(micro_benchmark.image(record.image), record.question), VLMInput(None, record.question)]
    hidden, lens = micro_adapter.hidden_and_lens(items)
    assert hidden.shape[:2] == lens.shape[:2] == (2, micro_adapter.num_layers + 1)
    assert torch.allclose(hidden, micro_adapter.hidden_states(items), atol=1e-5)
    assert torch.allclose(lens, micro_adapter.logit_lens(items), atol=1e-4)


def test_whitebox_attacks_end_to_end_on_the_micro_model(micro_adapter, micro_benchmark) -> None:
    record = micro_benchmark.records[0]
    ctx = AttackContext(micro_adapter, micro_benchmark, record, seed=0)
    row = micro_adapter.encode(VLMInput(micro_benchmark.image(record.image), record.question, record.answer), False)
    assert ctx.target_token_id() == row.input_ids[row.answer_start]
    n = micro_adapter.num_layers
    first = {name: get_attack(name).run(ctx).to_json() for name in ("hp", "pd", "pd2", "probe")}
    assert first["hp"]["budget"] == 2 * 4 * len(default_layers(n))
    assert first["pd"]["budget"] == 2 * 4 * (len(default_layers(n, 2)) - 1)
    assert first["pd2"]["budget"] == 2 * 4 * (len(default_layers(n, 3)) - 2)
    probe = first["probe"]
    assert probe["details"]["n_train"] == len(micro_benchmark) - 1
    assert probe["budget"] == min(4, probe["details"]["n_classes"]) * len(default_layers(n))
    for out in first.values():
        assert isinstance(out["success"], bool) and out["kind"] == "whitebox"
        assert all(isinstance(v, bool) for v in out["scores"].values())
        assert out["candidates"] and all(isinstance(t, str) for t in out["candidates"])
        ranks = [r for r in out["details"]["rank_top"] if r is not None]
        assert all(0 <= r for r in ranks) and not any(isinstance(v, float) and math.isnan(v)
                                                      for v in out["scores"].values())
        json.dumps(out)
    again = AttackContext(micro_adapter, micro_benchmark, record, seed=0)
    assert {name: get_attack(name).run(again).to_json() for name in first} == first


# ---------------------------------------------------------------------- groups of facts


def test_probes_fitted_together_equal_each_fitted_alone() -> None:
    a_states, a_labels, _ = _planted(10, [5, 9, 11], seed=2)
    b_states, b_labels, _ = _planted(10, [9, 13, 17], seed=3)  # shares one class with the first fact
    together = fit_probes(torch.stack([a_states, b_states]), torch.stack([a_labels, b_labels]), ridge=1e-2)
    assert together.classes.tolist() == [5, 9, 11, 13, 17] and together.n_classes == [3, 3]
    assert torch.allclose(together.train_scores, together.scores(torch.stack([a_states, b_states])), atol=1e-9)
    targets = torch.stack([a_states[0], b_states[0]])
    grouped = probe_candidates_many(together, targets, [9, 9], k=2)
    for f, (states, labels) in enumerate([(a_states, a_labels), (b_states, b_labels)]):
        alone = fit_probe(states, labels, ridge=1e-2)
        own = together.scores(targets)[f][:, together.present[f]]
        assert torch.allclose(own, alone.scores(targets[f][None])[0], atol=1e-9)
        assert grouped[f] == probe_candidates(alone, targets[f], target=9, k=2)
    # a class of the other fact only is never a candidate, and ranks count the fact's own classes only
    assert not any(13 in row or 17 in row for row in grouped[0].top_ids)
    assert all(r is None or r < 3 for r in grouped[0].rank_top)


def test_run_many_equals_each_fact_alone_on_the_micro_model(micro_adapter, micro_benchmark) -> None:
    records = micro_benchmark.records[:5]
    for name in ("hp", "pd", "pd2", "probe"):
        attack = get_attack(name, k=2, **({"n_train": 6} if name == "probe" else {}))
        alone = [attack.run(AttackContext(micro_adapter, micro_benchmark, r, seed=0)).to_json() for r in records]
        contexts = [AttackContext(micro_adapter, micro_benchmark, r, seed=0) for r in records]
        assert [o.to_json() for o in attack.run_many(contexts)] == alone, name


def test_run_many_reads_each_fact_inside_its_slot() -> None:
    """Fact i's readouts are taken while slot i is entered (its own model variant), nothing outside."""
    records = [_record(0, "two"), _record(1, "one")]
    lens = {"q0": PROBS.log().float(), "q1": PROBS.flip(-1).log().float()}
    adapter = StubAdapter(4, {"two": TARGET, "one": 1}, {q: torch.zeros(5, 3) for q in lens}, lens)
    benchmark = Benchmark("stub", records, StubImages())
    entered: list[int] = []
    forwards_at: list[int] = []

    @contextlib.contextmanager
    def slot(i: int):
        entered.append(i)
        before = adapter.forwards
        yield
        forwards_at.append(adapter.forwards - before)

    contexts = [AttackContext(adapter, benchmark, r, seed=0) for r in records]
    outcomes = get_attack("hp", k=1).run_many(contexts, slot)
    assert entered == [0, 1] and forwards_at == [1, 1]
    assert [o.details["rank_top"] for o in outcomes] == [
        get_attack("hp", k=1).run(AttackContext(adapter, benchmark, r, seed=0)).details["rank_top"] for r in records]
