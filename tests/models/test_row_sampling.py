"""Per-row seeded sampling: exact draws from softmax(logits / T) that do not depend on the batch."""

from __future__ import annotations

import torch

from mmunlearn.models.adapters.base import VLMInput
from mmunlearn.models.row_sampling import RowSeededSampler, row_seeds, uniform_noise


def test_noise_is_uniform_deterministic_and_keyed_by_seed_step_and_token():
    seeds = torch.tensor(row_seeds(0, 4000))
    u = uniform_noise(seeds, step=0, vocab=8)
    assert u.dtype == torch.float64 and bool(((u > 0) & (u < 1)).all())
    assert torch.equal(u, uniform_noise(seeds, step=0, vocab=8))
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    assert not torch.equal(u, uniform_noise(seeds, step=1, vocab=8))
    # Neighbouring tokens, steps and seeds are uncorrelated.
    for a, b in ((u[:, 0], u[:, 1]), (u[:, 0], uniform_noise(seeds, 1, 8)[:, 0]), (u[:-1, 0], u[1:, 0])):
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.05
    assert len(set(row_seeds(5, 1000))) == 1000 and row_seeds(5, 3) == row_seeds(5, 10)[:3]


def test_samples_follow_the_tempered_and_nucleus_filtered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0]])
    n = 20000
    sampler = RowSeededSampler(row_seeds(1, n), prompt_length=3, temperature=2.0)
    ids = torch.zeros(n, 3, dtype=torch.long)
    picks = sampler(ids, logits.expand(n, -1).clone()).argmax(-1)
    freq = torch.bincount(picks, minlength=5).double() / n
    expected = (logits[0].double() / 2.0).softmax(-1)
    assert torch.allclose(freq, expected, atol=0.012), (freq, expected)
    nucleus = RowSeededSampler(row_seeds(1, n), prompt_length=3, top_p=0.8)
    kept = nucleus(ids, logits.expand(n, -1).clone()).argmax(-1)
    assert set(kept.tolist()) == {0, 1}  # p = .64, .24 reach 0.8; the tail is never drawn


def test_an_items_samples_do_not_depend_on_the_batch(micro_adapter, micro_benchmark):
    records = micro_benchmark.records[:6]
    items = [VLMInput(micro_benchmark.image(r.image), r.question) for r in records]
    seeds = row_seeds(11, len(items))
    together = micro_adapter.generate(items, max_new_tokens=6, do_sample=True, temperature=1.5, seeds=seeds)
    alone = [micro_adapter.generate([it], max_new_tokens=6, do_sample=True, temperature=1.5, seeds=[s])[0]
             for it, s in zip(items, seeds)]
    micro_adapter.batch_size = 4  # other batch boundaries and padding widths
    rebatched = micro_adapter.generate(items[::-1], max_new_tokens=6, do_sample=True, temperature=1.5,
                                       seeds=seeds[::-1])[::-1]
    assert together == alone == rebatched
    assert len(set(together)) > 1
    other = micro_adapter.generate(items, max_new_tokens=6, do_sample=True, temperature=1.5, seeds=row_seeds(12, 6))
    assert other != together


def test_shared_prompt_prefill_gives_the_samples_of_separate_rows(micro_adapter, micro_benchmark):
    records = micro_benchmark.records[:4]
    items = [VLMInput(micro_benchmark.image(r.image), r.question) for r in records]
    seeds = [row_seeds(k, n) for k, n in enumerate([3, 1, 5, 2])]
    assert micro_adapter.shares_prompt_prefill
    micro_adapter.batch_size = 6  # groups of whole items, at most 6 samples each
    shared = micro_adapter.sample(items, seeds, max_new_tokens=6, temperature=1.5)
    micro_adapter.shares_prompt_prefill = False
    separate = micro_adapter.sample(items, seeds, max_new_tokens=6, temperature=1.5)
    flat = micro_adapter.generate([it for it, s in zip(items, seeds) for _ in s], max_new_tokens=6, do_sample=True,
                                  temperature=1.5, seeds=[x for s in seeds for x in s])
    assert [len(t) for t in shared] == [3, 1, 5, 2]
    assert shared == separate and [x for t in shared for x in t] == flat
    assert len({x for t in shared for x in t}) > 2
