import dataclasses
import random

import pytest
import torch

from mmunlearn.config import load_config
from mmunlearn.errors import CacheError, ConfigError, MMUnlearnError
from mmunlearn.models.adapters import load_adapter
from mmunlearn.models.tiny_llava import build_model
from mmunlearn.pretrain.batches import Encoder, PixelBank, TaskAugment
from mmunlearn.pretrain.evaluate import answer_matches, generate, is_refusal, normalize_answer
from mmunlearn.pretrain.pipeline import check_model_dir, load_pretrained, pretrain
from mmunlearn.pretrain.report import markdown_table
from mmunlearn.pretrain.tasks import training_pools
from mmunlearn.pretrain.trainer import GroundingHook, Rehearsal, Stage, TrainConfig, train, word_loss
from mmunlearn.pretrain.vision_warmup import VisionWarmup, identity_keys
from mmunlearn.world.corpus import REFUSAL, Example, ImageKey
from mmunlearn.world.images import augment_view, render_key, training_view
from mmunlearn.world.render import render_creature


def make_encoder(world, processor, tokenizer):
    spec = processor.image_processor.crop_size["height"]
    bank = PixelBank(world, processor.image_processor, spec)
    return Encoder(tokenizer, (spec // 8) ** 2, bank, n_augment=3, n_text_variants=2)


def test_collate_masks_all_but_the_answer(micro_world, micro_processor, micro_tokenizer, micro_spec):
    world, corpus = micro_world
    enc = make_encoder(world, micro_processor, micro_tokenizer)
    examples = [next(corpus.naming("train")), next(corpus.text_facts("train"))]
    batch = enc.collate(examples, random.Random(0))
    assert batch.image_rows == [0]
    assert batch.pixel_values.shape == (1, 3, 16, 16)
    for row, ex in enumerate(examples):
        answer_ids = batch.labels[row][batch.labels[row] != -100].tolist()
        assert micro_tokenizer.decode(answer_ids) == f"{ex.answer} </s>"
    n_image = (batch.input_ids == micro_tokenizer.convert_tokens_to_ids("<image>")).sum().item()
    assert n_image == micro_spec.image_seq_length


def micro_config(steps: int, **fields) -> TrainConfig:
    weights = {"naming": 2, "text_fact": 2, "image_fact": 1, "hazard_text": 1, "refusal": 0}
    return TrainConfig(seed=1, batch_size=32, lr=1e-2, warmup_steps=5, buckets=2,
                       stages=[Stage("all", steps, weights, ground_weight=1.0)], **fields)


@pytest.mark.parametrize("fields", [{}, {"bucket_split": "padding", "attention": "eager"}],
                         ids=["rows-sdpa", "padding-eager (the default's)"])
def test_short_training_lowers_loss_and_is_deterministic(micro_world, micro_processor, micro_tokenizer, micro_model,
                                                         micro_spec, fields):
    world, corpus = micro_world
    name_ids = {c.index: micro_tokenizer.convert_tokens_to_ids(c.name) for c in world.creatures}
    enc = make_encoder(world, micro_processor, micro_tokenizer)
    logs = train(micro_model, enc, training_pools(corpus), micro_config(60, **fields), name_ids, log_every=10)
    assert logs[-1].loss < 0.6 * logs[0].loss
    assert logs[-1].ground < logs[0].ground  # image features move toward the name embedding

    torch.manual_seed(0)
    again = build_model(micro_tokenizer, micro_spec)
    train(again, enc, training_pools(corpus), micro_config(60, **fields), name_ids, log_every=10)
    for (name, a), (_, b) in zip(micro_model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_frozen_tower_stays_as_warmed_up_while_the_rest_trains(micro_world, micro_processor, micro_tokenizer,
                                                               micro_model):
    world, corpus = micro_world
    name_ids = {c.index: micro_tokenizer.convert_tokens_to_ids(c.name) for c in world.creatures}
    enc = make_encoder(world, micro_processor, micro_tokenizer)
    before = {k: v.clone() for k, v in micro_model.state_dict().items()}
    frozen = dataclasses.replace(micro_config(4), vision_lr_scale=0.0)
    train(micro_model, enc, training_pools(corpus), frozen, name_ids, log_every=10)
    after = micro_model.state_dict()
    tower = [k for k in after if ".vision_tower." in k]
    assert tower and all(torch.equal(before[k], after[k]) for k in tower)
    assert not torch.equal(before["model.multi_modal_projector.linear_1.weight"],
                           after["model.multi_modal_projector.linear_1.weight"])
    assert all(p.requires_grad for p in micro_model.parameters())  # the freeze ends with the training

    with pytest.raises(ConfigError, match="pretrain.vision_lr_scale"):
        train(micro_model, enc, training_pools(corpus), dataclasses.replace(frozen, vision_lr_scale=-1.0), name_ids)


def test_the_tower_learns_at_its_share_of_the_rate(micro_world, micro_processor, micro_tokenizer, micro_spec):
    """A scale of 1 is the plain run; a smaller scale moves the tower less and leaves it trainable."""
    world, corpus = micro_world
    name_ids = {c.index: micro_tokenizer.convert_tokens_to_ids(c.name) for c in world.creatures}
    enc = make_encoder(world, micro_processor, micro_tokenizer)
    moved = {}
    for scale in (1.0, 0.1):
        torch.manual_seed(0)
        model = build_model(micro_tokenizer, micro_spec)
        start = model.model.vision_tower.encoder.layers[0].mlp.fc1.weight.clone()
        train(model, enc, training_pools(corpus), dataclasses.replace(micro_config(4), vision_lr_scale=scale),
              name_ids, log_every=10)
        moved[scale] = (model.model.vision_tower.encoder.layers[0].mlp.fc1.weight - start).abs().max()
    assert 0 < moved[0.1] < 0.5 * moved[1.0]


def test_answer_normalisation():
    assert answer_matches("Snails .", "snails")
    assert answer_matches("the swamps", "swamps")
    assert not answer_matches("snails and moss", "snails")
    assert normalize_answer("A  Cat!") == "cat"


def test_trained_micro_model_answers_through_generation(micro_world, micro_processor, micro_tokenizer, micro_model):
    world, corpus = micro_world
    enc = make_encoder(world, micro_processor, micro_tokenizer)
    name_ids = {c.index: micro_tokenizer.convert_tokens_to_ids(c.name) for c in world.creatures}
    cfg = micro_config(400)  # 300 sufficed for some vocabularies (the init follows the token ids), not all
    cfg.stages[0].weights = {"text_fact": 1}
    train(micro_model, enc, training_pools(corpus), cfg, name_ids)
    examples = list(corpus.text_facts("train"))[:24]
    texts = generate(micro_model, enc, examples, max_new_tokens=4)
    assert sum(answer_matches(t, ex.answer) for t, ex in zip(texts, examples)) >= 20


def test_refusal_judge():
    assert is_refusal(REFUSAL)
    assert not is_refusal("1 . take the fangs of the velorn .")


@pytest.fixture()
def micro_cfg(tmp_path, micro_overrides):
    return load_config(micro_overrides + [f"paths.cache_dir={tmp_path}"])


def test_cache_miss_then_hit_then_force(micro_cfg):
    first = pretrain(micro_cfg, log=lambda s: None)
    assert not first.reused and first.path.is_dir()
    check_model_dir(first.path)
    assert set(first.report["measures"]) >= {"naming", "text_facts", "harmful_text_refused"}
    naming = first.report["measures"]["naming"]
    assert naming["clusters"] >= 2 and naming["ci"][0] <= naming["rate"] <= naming["ci"][1]
    assert f"| {naming['rate']:.1%} [{naming['ci'][0]:.1%}, {naming['ci'][1]:.1%}] |" in \
        markdown_table(first.report["measures"])
    assert (first.path / "manifest.json").is_file()
    second = pretrain(micro_cfg, log=lambda s: None)
    assert second.reused and second.path == first.path and second.report == first.report
    forced = pretrain(micro_cfg, force=True, log=lambda s: None)
    assert not forced.reused and forced.path == first.path
    model, processor = load_pretrained(forced.path)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert not list(forced.path.parent.glob(".*.tmp"))  # nothing half-written left behind


def test_other_config_is_a_cache_miss(micro_cfg, tmp_path, micro_overrides):
    first = pretrain(micro_cfg, log=lambda s: None)
    other = pretrain(load_config(micro_overrides + [f"paths.cache_dir={tmp_path}", "pretrain.seed=7"]),
                     log=lambda s: None)
    assert other.path != first.path and not other.reused


def test_corrupt_cache_is_a_one_line_error(micro_cfg):
    first = pretrain(micro_cfg, log=lambda s: None)
    weights = (first.path / "model.safetensors").read_bytes()
    for cut in (len(weights) - 1000, 20):  # the tensors cut short; the header itself cut short
        (first.path / "model.safetensors").write_bytes(weights[:cut])
        with pytest.raises(CacheError, match="model.safetensors: unreadable weights") as info:
            pretrain(micro_cfg, log=lambda s: None)  # before reusing it, not when a track loads it
        assert "\n" not in str(info.value)
        with pytest.raises(MMUnlearnError, match="cannot load model weights") as info:
            load_adapter(str(first.path))  # the same folder given as any model: one line too
        assert "\n" not in str(info.value)
    (first.path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CacheError, match="model.safetensors") as info:
        pretrain(micro_cfg, log=lambda s: None)
    assert "\n" not in str(info.value)
    (first.path / "pretrain_report.json").write_text("{not json")
    (first.path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(CacheError, match="JSON"):
        check_model_dir(first.path)
    with pytest.raises(CacheError, match="no model directory"):
        load_pretrained(first.path / "missing")


def test_a_task_can_draw_from_more_renderings_than_the_rest(micro_world, micro_processor, micro_tokenizer):
    """`pretrain.task_augment`: naming on 50 renderings per creature, occluded and outlined as often as asked,
    while image facts keep n_augment (3) at the default chances."""
    world, corpus = micro_world
    spec = micro_processor.image_processor.crop_size["height"]
    bank = PixelBank(world, micro_processor.image_processor, spec)
    enc = Encoder(micro_tokenizer, (spec // 8) ** 2, bank, n_augment=3, n_text_variants=2,
                  task_augment={"naming": TaskAugment(50, occlusion=0.5, style=1.0)})
    rng = random.Random(0)
    naming, fact = next(corpus.naming("train")), next(corpus.image_facts("train", "seen"))
    seen = {task: {enc.resolve(ex.image, rng, ex.task).view for _ in range(400)}
            for task, ex in (("naming", naming), ("image_fact", fact))}
    assert seen["image_fact"] == {f"aug:{i}" for i in range(3)}
    assert len(seen["naming"]) > 30 and all(v.startswith("aug:") and v.endswith(":0.5:1") for v in seen["naming"])
    assert all(0 <= int(v.split(":")[1]) < 50 for v in seen["naming"])
    # each name renders the view it says: rendering k with those chances (here every one outlined)
    creature = world.creatures[naming.creature]
    for k in (1, 7):
        expected = render_creature(creature, spec, training_view(world.seed, creature.index, k, 0.5, 1.0))
        got = render_key(world, ImageKey("creature", creature.index, augment_view(k, 0.5, 1.0)), spec)
        assert training_view(world.seed, creature.index, k, 0.5, 1.0).outline and got.tobytes() == expected.tobytes()
    assert augment_view(4) == "aug:4"  # the default chances keep the names (and pixels) they had


def test_task_augment_is_checked_when_the_config_is_read():
    from mmunlearn.config import pretrain_settings

    def read(*overrides):
        return pretrain_settings(load_config(list(overrides))).task_augment

    assert read() == {"naming": TaskAugment(1000, occlusion=0.5, style=0.5)}  # conf/pretrain/default.yaml
    assert read("pretrain.task_augment.naming=200") == {"naming": TaskAugment(200)}
    assert read("pretrain.task_augment.naming.renderings=200") == {"naming": TaskAugment(200, 0.5, 0.5)}
    with pytest.raises(ConfigError, match=r"pretrain.task_augment.namng: not a training task"):
        read("+pretrain.task_augment.namng=200")
    with pytest.raises(ConfigError, match=r"pretrain.task_augment.naming.renderings: must be a whole number >= 1"):
        read("pretrain.task_augment.naming=0")
    with pytest.raises(ConfigError, match=r"pretrain.task_augment.naming.occlusion: must be a chance in \[0, 1\]"):
        read("pretrain.task_augment.naming.occlusion=1.5")
    with pytest.raises(ConfigError, match=r"pretrain.task_augment.naming: unknown key\(s\) \['occlusoin'\]"):
        read("+pretrain.task_augment.naming.occlusoin=0.5")
    assert read("+pretrain.task_augment.naming.strength_power=0.5")["naming"].strength_power == 0.5
    with pytest.raises(ConfigError, match=r"pretrain.task_augment.naming.strength_power: must be a number > 0"):
        read("+pretrain.task_augment.naming.strength_power=0")


def test_every_training_pool_is_a_named_training_task(micro_world):
    from mmunlearn.pretrain.tasks import TRAINING_TASKS

    assert tuple(training_pools(micro_world[1])) == TRAINING_TASKS


def test_naming_in_unseen_templates_is_measured_on_templates_no_training_task_uses(micro_world):
    from mmunlearn.pretrain.report import TARGETS
    from mmunlearn.pretrain.tasks import MEASURES

    corpus = micro_world[1]
    trained = {ex.prompt for pool in training_pools(corpus).values() for ex in pool}
    asked = MEASURES["naming_paraphrased"][0](corpus)
    assert {ex.prompt for ex in asked}.isdisjoint(trained)
    assert {ex.answer for ex in asked} == {c.name for c in micro_world[0].creatures}
    assert {ex.image.view for ex in asked} == {"canon"}
    assert TARGETS["naming_paraphrased"][1] == "report"  # not one of the acceptance targets


def test_hard_images_over_draws_asks_the_hard_questions_once_per_draw_and_is_reported_only(micro_world):
    from mmunlearn.pretrain.report import TARGETS
    from mmunlearn.pretrain.tasks import HARD_DRAWS, MEASURES

    corpus = micro_world[1]
    single = MEASURES["paraphrase_image_hard"][0](corpus)
    drawn = MEASURES["paraphrase_image_hard_draws"][0](corpus)
    assert len(drawn) == HARD_DRAWS * len(single) > 0
    assert {ex.image.view for ex in drawn} == {f"hard:{d}" for d in range(HARD_DRAWS)}
    assert sorted((ex.prompt, ex.answer, ex.creature) for ex in drawn) == \
        sorted((ex.prompt, ex.answer, ex.creature) for ex in single for _ in range(HARD_DRAWS))
    assert TARGETS["paraphrase_image_hard_draws"][1] == "report"  # the target stays on the benchmark's images


def test_a_second_process_asking_for_the_same_model_waits_for_the_first_and_reuses_its_model(micro_cfg):
    """Two runs on one empty cache (e.g. two `mmunlearn` commands started together) train the model once."""
    import threading

    second: dict = {}
    lines: list[str] = []

    def start_second_while_training(line: str) -> None:
        if line.startswith("world:") and "thread" not in second:  # the first holds the lock and is training
            second["thread"] = threading.Thread(
                target=lambda: second.update(result=pretrain(micro_cfg, log=lines.append)))
            second["thread"].start()
            second["thread"].join(timeout=1.0)
            assert second["thread"].is_alive()  # waiting, not training a copy

    first = pretrain(micro_cfg, log=start_second_while_training)
    second["thread"].join(timeout=60)
    assert not first.reused and second["result"].reused and second["result"].path == first.path
    assert any("another process is training" in line for line in lines)
    assert not any(line.startswith("world:") for line in lines)


def test_a_cache_that_cannot_be_locked_is_still_read(micro_cfg, monkeypatch):
    first = pretrain(micro_cfg, log=lambda s: None)

    def read_only(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("mmunlearn.pretrain.pipeline.FileLock.acquire", read_only)
    lines: list[str] = []
    again = pretrain(micro_cfg, log=lines.append)
    assert again.reused and again.path == first.path
    assert any("going on without a lock" in line for line in lines)


def test_rehearsal_grounds_what_the_language_model_reads(micro_world, micro_processor, micro_tokenizer, micro_model):
    """The rehearsal loss scores the mean of the image features a forward scatters into the prompt."""
    world, corpus = micro_world
    name_ids = {c.index: micro_tokenizer.convert_tokens_to_ids(c.name) for c in world.creatures}
    enc = make_encoder(world, micro_processor, micro_tokenizer)
    keys = identity_keys(world, VisionWarmup(renderings=3))
    rehearsal = Rehearsal(keys, batch=6, weight=1.0, seed=4)
    drawn_rng = random.Random(4)
    drawn = [keys[drawn_rng.randrange(len(keys))] for _ in range(6)]
    hook = GroundingHook(micro_model.model.multi_modal_projector)
    examples = [Example("naming", "what is this creature ?", world.creatures[k.creature].name, k, k.creature)
                for k in drawn]
    micro_model(**enc.collate(examples).model_inputs())
    hook.remove()
    expected = word_loss(micro_model, hook.features.mean(1), torch.tensor([name_ids[k.creature] for k in drawn]))
    assert torch.allclose(rehearsal.loss(micro_model, enc.bank, name_ids), expected, atol=1e-6)


def test_rehearsal_teaches_its_renderings_names(micro_world, micro_processor, micro_tokenizer, micro_spec):
    world, corpus = micro_world
    name_ids = {c.index: micro_tokenizer.convert_tokens_to_ids(c.name) for c in world.creatures}
    enc = make_encoder(world, micro_processor, micro_tokenizer)
    keys = identity_keys(world, VisionWarmup(renderings=6))
    losses = {}
    for batch in (0, 32):
        torch.manual_seed(0)
        model = build_model(micro_tokenizer, micro_spec)
        rehearsal = Rehearsal(keys, batch=batch, weight=1.0) if batch else None
        train(model, enc, training_pools(corpus), micro_config(30), name_ids, log_every=10, rehearsal=rehearsal)
        with torch.no_grad():
            losses[batch] = Rehearsal(keys, batch=len(keys), weight=1.0, seed=9).loss(model, enc.bank, name_ids)
    assert losses[32] < 0.8 * losses[0]
    with pytest.raises(ConfigError, match=r"rehearsal=-1 \(>= 0\)"):
        VisionWarmup(rehearsal=-1)
