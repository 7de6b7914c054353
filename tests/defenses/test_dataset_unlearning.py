"""Dataset unlearning: loss masks on hand-built batches, the whole forget set used, exact restore."""

from __future__ import annotations

import random
import resource
from pathlib import Path

import pytest
import torch

from mmunlearn.defenses.dataset_unlearning import (
    TrainSettings,
    UnlearnData,
    UnlearnTrainer,
    _cycle,
    _reset_peak_rss,
    answer_logprobs,
    get_method,
    kl_on_tokens,
    known_methods,
    mean_nll,
)
from mmunlearn.defenses.editor import EditConfig, Editor
from mmunlearn.errors import ConfigError
from mmunlearn.models.adapters.base import VLMInput


def _rows(micro_benchmark, n: int = 4) -> list[VLMInput]:
    out = []
    for r in micro_benchmark.records[:n]:
        out.append(VLMInput(micro_benchmark.image(r.image), r.question, r.answer))
        out.append(VLMInput(None, f"what is the {r.meta['attribute']} of the {r.subject} ?", r.answer))
    return out


def test_answer_mask_covers_exactly_the_answer_tokens(micro_adapter):
    items = [VLMInput(None, "what does the a eat ?", "berries"), VLMInput(None, "hunts ?", "owls and hawks")]
    batch = micro_adapter.format(items, for_generation=False)
    vocab = len(micro_adapter.tokenizer)
    logits = torch.zeros(*batch.inputs["input_ids"].shape, vocab)  # uniform: every token has log(1/V)
    total, count = answer_logprobs(logits, batch)
    for b, item in enumerate(items):
        n_answer = len(micro_adapter.tokenizer(item.answer, add_special_tokens=False)["input_ids"]) + 1  # + </s>
        assert int(count[b]) == n_answer
        assert float(total[b]) == pytest.approx(-n_answer * torch.log(torch.tensor(float(vocab))).item())
    assert float(mean_nll(logits, batch)) == pytest.approx(torch.log(torch.tensor(float(vocab))).item())


def test_kl_is_zero_on_equal_logits_and_ignores_padding(micro_adapter):
    items = [VLMInput(None, "what does the a eat ?", "berries"), VLMInput(None, "hunts ?", "owls")]
    batch = micro_adapter.format(items, for_generation=False)
    mask = batch.inputs["attention_mask"]
    assert (mask == 0).any()  # the second row is left-padded
    torch.manual_seed(0)
    ref = torch.randn(*mask.shape, 11)
    assert float(kl_on_tokens(ref, ref, mask)) == pytest.approx(0.0, abs=1e-6)
    cur = torch.randn(*mask.shape, 11)
    cur_padded = cur.clone()
    cur_padded[mask == 0] += 100.0  # whatever happens at pad positions must not count
    assert float(kl_on_tokens(ref, cur, mask)) == pytest.approx(float(kl_on_tokens(ref, cur_padded, mask)))
    assert float(kl_on_tokens(ref, cur, mask)) > 0


def test_cycle_uses_every_forget_row_before_repeating():
    rows = [VLMInput(None, str(i), "x") for i in range(10)]
    it = _cycle(rows, 3, random.Random(0))
    first_epoch = [r.question for _ in range(3) for r in next(it)] + [r.question for r in next(it)][:1]
    assert sorted(first_epoch) == sorted(str(i) for i in range(10))


def test_registry_and_errors():
    assert set(known_methods()) == {"yao", "npo", "rmu", "sft"}
    with pytest.raises(ConfigError, match="did you mean 'yao'"):
        get_method("yoa")
    with pytest.raises(ConfigError, match="unknown parameter"):
        get_method("yao", weight=1)


@pytest.mark.parametrize("name, method", [("yao", "lora"), ("npo", "lora"), ("rmu", "lora"), ("sft", "lora"),
                                          ("yao", "full")])
def test_each_method_trains_and_restores_exactly(micro_adapter, micro_benchmark, name, method):
    rows = _rows(micro_benchmark)
    data = UnlearnData(forget=rows[:4], normal=rows[4:], refusal=[VLMInput(r.image, r.question, "i cannot")
                                                                   for r in rows[:4]],
                       random_answers=["berries", "owls"])
    before = {k: v.clone() for k, v in micro_adapter.model.state_dict().items()}
    config = EditConfig(method=method, modules=("q", "v", "down"), layers="all", rank=2, lr=0.01)
    with Editor(micro_adapter, config) as editor:
        trainer = UnlearnTrainer(micro_adapter, editor, TrainSettings(steps=3, batch_size=2, lr=0.01))
        losses = trainer.train(get_method(name, **({"layer": 1} if name == "rmu" else {})), data)
        assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
        c = trainer.compute
        assert c.steps == 3 and c.text_tokens > 0 and c.flops > 0 and c.seconds > 0
        editor.restore()
    after = micro_adapter.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_multimodal_forget_data_costs_image_tokens(micro_adapter, micro_benchmark):
    rows = _rows(micro_benchmark)
    text_rows = [r for r in rows if r.image is None]
    image_rows = [r for r in rows if r.image is not None]
    costs = {}
    with Editor(micro_adapter, EditConfig(layers="all")) as editor:
        for kind, forget in (("text", text_rows), ("multimodal", image_rows)):
            trainer = UnlearnTrainer(micro_adapter, editor, TrainSettings(steps=2, batch_size=2))
            trainer.train(get_method("npo"), UnlearnData(forget=forget, normal=text_rows))
            costs[kind] = trainer.compute
            editor.restore()
    assert costs["text"].image_tokens == 0 and costs["multimodal"].image_tokens > 0
    assert costs["multimodal"].flops > costs["text"].flops


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset")
def test_a_runs_peak_memory_is_its_own_not_the_largest_run_before_it(micro_adapter, micro_benchmark):
    def peak_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    spike = torch.ones(50_000_000)  # 200 MB resident, as an earlier, larger run in this process would leave
    spike += 1
    del spike
    before = peak_mb()
    assert _reset_peak_rss() and peak_mb() < before - 150
    rows = _rows(micro_benchmark)
    with Editor(micro_adapter, EditConfig(layers="all")) as editor:
        trainer = UnlearnTrainer(micro_adapter, editor, TrainSettings(steps=1, batch_size=2))
        trainer.train(get_method("npo"), UnlearnData(forget=rows, normal=rows))
        editor.restore()
    assert trainer.compute.memory_kind == "peak RSS of the run" and trainer.compute.peak_memory_mb < before - 150


def test_checkpoints_see_the_model_mid_training_and_change_nothing(micro_adapter, micro_benchmark):
    rows = _rows(micro_benchmark)
    data = UnlearnData(forget=rows[:4], normal=rows[4:], random_answers=["berries", "owls"])
    config = EditConfig(modules=("q", "v", "down"), layers="all", rank=2, lr=0.01)
    seen: list[tuple[int, bool, bool, float]] = []
    runs = {}
    with Editor(micro_adapter, config) as editor:
        for name, checkpoints in (("plain", ()), ("checkpoints", (1, 2))):
            trainer = UnlearnTrainer(micro_adapter, editor, TrainSettings(steps=3, batch_size=2, lr=0.01))

            def look(step: int) -> None:
                model = micro_adapter.model
                torch.rand(3)  # an evaluation that draws random numbers must not move the training's
                seen.append((step, model.training, any(p.requires_grad for p in model.parameters()),
                             float(sum(p.detach().abs().sum() for p in editor.trainable))))

            losses = trainer.train(get_method("yao"), data, checkpoints=checkpoints, on_checkpoint=look)
            runs[name] = (losses, [p.detach().clone() for p in editor.trainable])
            editor.restore()
    assert runs["checkpoints"][0] == runs["plain"][0]
    assert all(torch.equal(a, b) for a, b in zip(runs["checkpoints"][1], runs["plain"][1]))
    assert [(s, training, grads) for s, training, grads, _ in seen] == [(1, False, False), (2, False, False)]
    assert seen[0][3] != seen[1][3]  # the weights as trained so far, not the start or the end


def test_a_checkpoint_that_returns_true_stops_the_training_there(micro_adapter, micro_benchmark):
    rows = _rows(micro_benchmark)
    data = UnlearnData(forget=rows[:4], normal=rows[4:], random_answers=["berries", "owls"])
    with Editor(micro_adapter, EditConfig(layers="all", rank=2, lr=0.01)) as editor:
        trainer = UnlearnTrainer(micro_adapter, editor, TrainSettings(steps=5, batch_size=2, lr=0.01))
        losses = trainer.train(get_method("yao"), data, checkpoints=(1, 2, 3), on_checkpoint=lambda step: step == 2)
        editor.restore()
    assert len(losses) == 2 and trainer.compute.steps == 2
