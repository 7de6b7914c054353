"""Build an UnLOK-VQA-style benchmark from any VQA set: paraphrases, proximity tiers, filters, manual review.

Input items are (image reference, question, accepted answers, optional id, optional subject/entity). For each
item the pipeline ranks the other images by cosine similarity of an image embedding and picks:

* paraphrase images: images of the same group (same subject if given, else same first answer), most to
  least similar, cut into terciles easy/medium/hard; each tier takes its tercile's median image. With fewer
  than three such images the tiers are spread: one image -> easy; two -> easy and hard.
* neighbour images: images of items of other groups whose answers share nothing with this item's, hard = the most
  similar tercile, easy = the least similar (median of each tercile again). Items asking the same question
  are preferred; otherwise any item is used and the neighbour's expected answer is that item's own answer
  (recorded in `meta["neighbour_same_question"]`).
* neighbour questions: other questions about the same image with their answers, or, if there are none, the
  questions of the most similar other items (`meta["neighbour_questions_from"]` says which).
* the alternative answer: the answer of the hard neighbour (the most similar item with a different answer).

Question paraphrasers (rule, hf, smol = SmolLM2 offline) and image embedders are small registries
(`register_paraphraser`, `register_embedder`). Automatic filters (`correct_filter`, `tier_consistency_filter`,
and `paraphrase_filter.filter_paraphrases` with a sentence embedder from `text_embedders`) and a manual review
sheet (`export_review_sheet`, `import_kept_ids`, `apply_review`) narrow the result down.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mmunlearn.data.records import (
    TIERS,
    Benchmark,
    FactRecord,
    ImageSource,
    NeighbourImage,
    NeighbourQuestion,
    validate_benchmark,
)
from mmunlearn.data.unlok_format import image_refs
from mmunlearn.errors import ConfigError, DataError
from mmunlearn.registry import FactoryRegistry
from mmunlearn.runner.manifest import atomic_file

N_NEIGHBOUR_QUESTIONS = 3


class Paraphraser(Protocol):
    """Rewrites each question `n` times (fewer if it cannot find `n` distinct rewrites); seeded."""

    def __call__(self, questions: Sequence[str], n: int, seed: int) -> list[list[str]]: ...


class Embedder(Protocol):
    """Images -> an (n, d) float array of L2-normalised rows, so a dot product is the cosine similarity."""

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray: ...


# ------------------------------------------------------------------------------------------------ registries

_PARAPHRASERS: FactoryRegistry[Paraphraser] = FactoryRegistry("paraphraser")
_EMBEDDERS: FactoryRegistry[Embedder] = FactoryRegistry("embedder")


def register_paraphraser(name: str) -> Callable[[Callable[..., Paraphraser]], Callable[..., Paraphraser]]:
    """Decorator: `factory(model=None, **options)` builds the paraphraser called `name`."""
    return _PARAPHRASERS.register(name)


def register_embedder(name: str) -> Callable[[Callable[..., Embedder]], Callable[..., Embedder]]:
    """Decorator: `factory(model=None, **options)` builds the image embedder called `name`."""
    return _EMBEDDERS.register(name)


def get_paraphraser(name: str, model: str | None = None, **options: Any) -> Paraphraser:
    return _PARAPHRASERS.get(name)(model=model, **options)


def get_embedder(name: str, model: str | None = None, **options: Any) -> Embedder:
    return _EMBEDDERS.get(name)(model=model, **options)


def paraphraser_names() -> list[str]:
    return _PARAPHRASERS.names()


def embedder_names() -> list[str]:
    return _EMBEDDERS.names()


def no_model(kind: str, model: str | None) -> None:
    if model is not None:
        raise ConfigError(f"{kind} takes no model (got {model!r}); use the 'hf' one to run a model")


def needs_model(kind: str, model: str | None) -> str:
    if not model:
        raise ConfigError(f"{kind} 'hf' needs a model (a Hugging Face id or a local directory)")
    return model


# ------------------------------------------------------------------------------------------- rule paraphrases

_SYNONYMS = (
    ("picture", "image", "photo"),
    ("shown", "pictured", "depicted"),
    ("kind of", "type of", "sort of"),
    ("color", "colour"),
    ("called", "named"),
    ("made of", "made from"),
    ("what is", "what's"),
    ("eat", "feed on"),
    ("live", "dwell"),
)
_ONE_WAY = (("this", "the"), ("these", "the"))  # swaps that only read well in one direction
_PREFIXES = ("tell me: {q}", "question: {q}", "please answer: {q}", "i'd like to know: {q}")
_OF_FORM = re.compile(r"^what is the (?P<x>[\w\s]+?) of (?P<y>[\w\s']+?)\s*\?$")
_POSSESSIVE_FORM = re.compile(r"^what is (?P<y>[\w\s]+?)'s (?P<x>[\w\s]+?)\s*\?$")
_WH_IS_FORM = re.compile(r"^(?P<wh>what|which|who|where|when|how \w+|how) (?P<verb>is|are|was|were) "
                         r"(?P<rest>.+?)\s*\?$")


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def _question_mark(text: str) -> str:
    text = " ".join(text.split()).rstrip(" ?.")
    return f"{text}?"


def _synonym_swaps(q: str) -> list[str]:
    out = []
    for group in _SYNONYMS:
        for word in group:
            pattern = re.compile(rf"\b{re.escape(word)}\b")
            if pattern.search(q):
                out += [pattern.sub(other, q, count=1) for other in group if other != word]
    for word, other in _ONE_WAY:
        pattern = re.compile(rf"\b{word}\b")
        if pattern.search(q):
            out.append(pattern.sub(other, q, count=1))
    return out


def _reorders(q: str) -> list[str]:
    """'what is the X of Y?' <-> 'what is Y's X?', and 'wh- is R?' -> 'tell me wh- R is.'"""
    out = []
    if m := _OF_FORM.match(q):
        out.append(f"what is {m['y']}'s {m['x']}?")
    if m := _POSSESSIVE_FORM.match(q):
        out.append(f"what is the {m['x']} of {m['y']}?")
    if m := _WH_IS_FORM.match(q):
        out.append(f"tell me {m['wh']} {m['rest']} {m['verb']}.")
        out.append(f"can you tell me {m['wh']} {m['rest']} {m['verb']}?")
    return out


def rule_rewrites(question: str) -> list[str]:
    """Every distinct deterministic rewrite of a question (synonyms, reordering, prefixes), sorted."""
    q = _question_mark(question.strip().lower())
    first = [q, *_synonym_swaps(q), *_reorders(q)]
    second = [r for f in first[1:] for r in _reorders(f) + _synonym_swaps(f)]
    prefixed = [p.format(q=f) for f in first[:3] for p in _PREFIXES]
    original = _normal(q)
    seen: dict[str, str] = {}
    for text in first[1:] + second + prefixed:
        key = _normal(text)
        if key != original and key not in seen:
            seen[key] = text
    return sorted(seen.values())


@dataclass
class RuleParaphraser:
    """No model: a seeded sample of rule rewrites, so the same seed always gives the same paraphrases."""

    def __call__(self, questions: Sequence[str], n: int, seed: int) -> list[list[str]]:
        out = []
        for q in questions:
            rewrites = rule_rewrites(q)
            rng = random.Random(f"rule-paraphrase/{seed}/{q}")
            out.append(rng.sample(rewrites, min(n, len(rewrites))))
        return out


@register_paraphraser("rule")
def _rule_factory(model: str | None = None) -> Paraphraser:
    no_model("paraphraser 'rule'", model)
    return RuleParaphraser()


# --------------------------------------------------------------------------------------------- HF paraphrases

PARAPHRASE_PROMPT = ("Rewrite the question below with different words but the same meaning. "
                     "Reply with the rewritten question only.\nQuestion: {question}\nRewritten question:")
_REPLY_LABEL = re.compile(r"^(?:(?:rewritten|paraphrased|reworded|new)\s+)?(?:question|paraphrase)\s*:\s*", re.I)


def parse_paraphrase(reply: str) -> str:
    """One question from a model reply: its first line without a "Rewritten question:" label, quotes or markdown,
    cut after the first question mark (small models run on into an answer)."""
    line = next((line.strip() for line in reply.splitlines() if line.strip()), "")
    line = _REPLY_LABEL.sub("", line).strip().strip('"\u201c\u201d*`').strip()
    return line[:line.index("?") + 1] if "?" in line else line


def _display_question(question: str) -> str:
    """'what is x ?' -> 'What is x?': small models copy the prompt's style, so show them ordinary writing."""
    text = re.sub(r"\s+([?.!,;:])", r"\1", " ".join(question.split()))
    return text[:1].upper() + text[1:]


def torch_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class HFParaphraser:
    """Any Hugging Face causal LM (hub id or directory) prompted to rewrite; seeded sampling, safetensors only.

    `examples` are (question, paraphrase) pairs shown first as earlier chat turns: few-shot keeps a small model
    rewriting instead of answering. `require_question` drops replies that are not questions (no "?").
    """

    def __init__(self, model: str | Path, trust_remote_code: bool = False, prompt: str = PARAPHRASE_PROMPT,
                 max_new_tokens: int = 32, temperature: float = 0.9, top_p: float = 0.95, max_rounds: int = 3,
                 device: str | None = None, examples: Sequence[tuple[str, str]] = (),
                 require_question: bool = False) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(model, use_safetensors=True,
                                                          trust_remote_code=trust_remote_code).to(self.device).eval()
        self.prompt, self.max_new_tokens, self.max_rounds = prompt, max_new_tokens, max_rounds
        self.temperature, self.top_p = temperature, top_p
        self.examples, self.require_question = tuple(examples), require_question

    def _prompt_ids(self, question: str) -> Any:
        turns = [*self.examples, (question, None)]
        if getattr(self.tokenizer, "chat_template", None):
            messages = []
            for q, a in turns:
                messages.append({"role": "user", "content": self.prompt.format(question=_display_question(q))})
                if a is not None:
                    messages.append({"role": "assistant", "content": a})
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                      return_dict=True)
        text = "\n\n".join(self.prompt.format(question=_display_question(q)) + (f" {a}" if a else "")
                           for q, a in turns)
        return self.tokenizer(text, return_tensors="pt")

    def _usable(self, text: str, question: str) -> bool:
        """Not empty, not the question itself, and a question when `require_question` is set."""
        return bool(_normal(text)) and _normal(text) != _normal(question) and \
            (not self.require_question or text.endswith("?"))

    def _sample(self, question: str, n: int) -> list[str]:
        import torch

        inputs = {k: v.to(self.device) for k, v in self._prompt_ids(question).items()}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(**inputs, do_sample=True, temperature=self.temperature, top_p=self.top_p,
                                      top_k=0, max_new_tokens=self.max_new_tokens, num_return_sequences=n,
                                      pad_token_id=pad)
        texts = self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [parse_paraphrase(t) for t in texts]

    def __call__(self, questions: Sequence[str], n: int, seed: int) -> list[list[str]]:
        import torch

        out = []
        for i, question in enumerate(tqdm(questions, desc="paraphrasing", unit="q", disable=None)):
            found: dict[str, str] = {}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 1_000_003 + i)
                for _ in range(self.max_rounds):
                    for text in self._sample(question, n):
                        if self._usable(text, question):
                            found.setdefault(_normal(text), text)
                    if len(found) >= n:
                        break
            out.append(list(found.values())[:n])
        return out


@register_paraphraser("hf")
def _hf_paraphraser_factory(model: str | None = None, **options: Any) -> Paraphraser:
    return HFParaphraser(needs_model("paraphraser", model), **options)


@register_paraphraser("smol")
def _smol_paraphraser_factory(model: str | None = None, **options: Any) -> Paraphraser:
    from mmunlearn.data.smol_paraphraser import smol_paraphraser  # loads the LLaVA module only when asked for

    return smol_paraphraser(model, **options)


# ------------------------------------------------------------------------------------------------- embedders


def l2_normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


@dataclass
class PixelEmbedder:
    """No model: a centred grayscale thumbnail (layout) joined with a colour histogram (palette)."""

    size: int = 16
    bins: int = 8

    def embed_one(self, image: Image.Image) -> np.ndarray:
        rgb = image.convert("RGB")
        grey = np.asarray(rgb.convert("L").resize((self.size, self.size), Image.Resampling.BOX), dtype=np.float64)
        grey = (grey - grey.mean()).ravel()
        pixels = np.asarray(rgb.resize((64, 64), Image.Resampling.BOX)).reshape(-1, 3)
        hist, _ = np.histogramdd(pixels, bins=(self.bins,) * 3, range=((0, 256),) * 3)
        parts = [p / n if (n := np.linalg.norm(p)) > 0 else p for p in (grey, hist.ravel())]
        return np.concatenate(parts)

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        return l2_normalise(np.stack([self.embed_one(im) for im in images]))


@register_embedder("pixels")
def _pixels_factory(model: str | None = None, **options: Any) -> Embedder:
    no_model("embedder 'pixels'", model)
    return PixelEmbedder(**options)


class HFImageEmbedder:
    """Any Hugging Face vision model or CLIP (hub id or directory): its pooled image features, safetensors only.

    The image processor is loaded with the PIL backend, so torchvision is never needed.
    """

    def __init__(self, model: str, trust_remote_code: bool = False, batch_size: int = 32,
                 device: str | None = None) -> None:
        from transformers import AutoImageProcessor, AutoModel

        self.device = torch_device(device)
        self.processor = AutoImageProcessor.from_pretrained(model, backend="pil", trust_remote_code=trust_remote_code)
        self.model = AutoModel.from_pretrained(model, use_safetensors=True,
                                               trust_remote_code=trust_remote_code).to(self.device).eval()
        self.batch_size = batch_size

    def _features(self, pixel_values: Any) -> Any:
        if hasattr(self.model, "get_image_features"):
            out = self.model.get_image_features(pixel_values=pixel_values)
        else:
            out = self.model(pixel_values=pixel_values)
        if hasattr(out, "shape"):
            return out
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state.mean(dim=1)

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        rows = []
        for start in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[start:start + self.batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            with torch.no_grad():
                rows.append(self._features(pixels).float().reshape(len(batch), -1).cpu().numpy())
        return l2_normalise(np.concatenate(rows).astype(np.float64))


@register_embedder("hf")
def _hf_embedder_factory(model: str | None = None, **options: Any) -> Embedder:
    return HFImageEmbedder(needs_model("embedder", model), **options)


# ----------------------------------------------------------------------------------------------------- items


@dataclass(frozen=True)
class VQAItem:
    """One question about one image with its accepted answers (first = the answer to delete)."""

    image: str
    question: str
    answers: tuple[str, ...]
    id: str
    subject: str = ""


def _item_error(where: str, index: int, item_id: Any, name: str, problem: str) -> DataError:
    label = f"item #{index}" + (f" ({item_id!r})" if item_id is not None else "")
    return DataError(f"{where}: {label}: field {name!r} {problem}")


def parse_item(raw: Mapping[str, Any] | VQAItem, index: int, where: str = "items") -> VQAItem:
    """Check one input item; a one-line `DataError` names the item index/id and the field."""
    if isinstance(raw, VQAItem):
        raw = raw.__dict__
    if not isinstance(raw, Mapping):
        raise DataError(f"{where}: item #{index}: expected an object, got {type(raw).__name__}")
    item_id = raw.get("id")
    if item_id is not None and (isinstance(item_id, bool) or not isinstance(item_id, (str, int))
                                or not str(item_id).strip()):
        raise _item_error(where, index, None, "id", f"must be a non-empty string or integer, got {item_id!r}")
    for name in ("image", "question"):
        if not isinstance(raw.get(name), str) or not raw[name].strip():
            raise _item_error(where, index, item_id, name, "must be a non-empty string")
    answers = raw.get("answers")
    if isinstance(answers, tuple):
        answers = list(answers)
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise _item_error(where, index, item_id, "answers", "must be a non-empty list of non-empty strings")
    subject = raw.get("subject") or ""
    if not isinstance(subject, str):
        raise _item_error(where, index, item_id, "subject", "must be a string")
    return VQAItem(image=raw["image"].strip(), question=" ".join(raw["question"].split()),
                   answers=tuple(dict.fromkeys(a.strip() for a in answers)),
                   id=str(item_id).strip() if item_id is not None else f"item-{index}", subject=subject.strip())


def parse_items(raw_items: Iterable[Mapping[str, Any] | VQAItem], where: str = "items") -> list[VQAItem]:
    items = [parse_item(raw, i, where) for i, raw in enumerate(raw_items)]
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.id in seen:
            raise _item_error(where, i, item.id, "id", f"repeats item #{seen[item.id]}")
        seen[item.id] = i
    return items


def read_items_jsonl(path: str | Path) -> list[VQAItem]:
    """VQA items, one JSON object a line (image, question, answers, optional id/subject); errors name the line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({' '.join(str(exc).split())})") from None
    raw = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}:{exc.colno}: malformed JSON ({exc.msg})") from None
        raw.append((number, obj))
    items = [parse_item(obj, i, f"{path}:{number}") for i, (number, obj) in enumerate(raw)]
    return parse_items(items, str(path))


# ------------------------------------------------------------------------------------------------ proximity


def _norm_answers(item: VQAItem) -> set[str]:
    return {_normal(a) for a in item.answers}


def _group_key(item: VQAItem) -> str:
    return _normal(item.subject) if item.subject else _normal(item.answers[0])


def spread_tiers(ranked: Sequence[Any]) -> dict[str, Any]:
    """Most -> least similar candidates as tiers easy/medium/hard: tercile medians (1 -> easy; 2 -> easy, hard)."""
    n = len(ranked)
    if n >= 3:
        parts = np.array_split(np.arange(n), 3)
        return {tier: ranked[int(part[(len(part) - 1) // 2])] for tier, part in zip(TIERS, parts)}
    return dict(zip((TIERS[0], TIERS[-1]), (ranked[0], ranked[-1]))) if n == 2 else dict(zip(TIERS[:1], ranked))


@dataclass
class _Pool:
    """Distinct images of the items, their embeddings and the similarity matrix."""

    refs: list[str]
    index: dict[str, int]
    sims: np.ndarray

    def ranked(self, ref: str, candidates: Iterable[str]) -> list[str]:
        """Candidate refs (distinct, other than `ref`), most similar to `ref` first; ties by name."""
        row = self.sims[self.index[ref]]
        unique = sorted({c for c in candidates if c != ref})
        return sorted(unique, key=lambda c: (-row[self.index[c]], c))


def embed_refs(refs: Sequence[str], images: ImageSource, embedder: Embedder, batch_size: int = 64,
               where: str = "images") -> np.ndarray:
    rows = []
    for start in tqdm(range(0, len(refs), batch_size), desc="embedding images", unit="batch", disable=None):
        rows.append(embedder([images.load(ref) for ref in refs[start:start + batch_size]]))
    matrix = np.concatenate(rows) if rows else np.zeros((0, 1))
    if not np.all(np.isfinite(matrix)):
        raise DataError(f"{where}: the image embedder returned non-finite values")
    return matrix


def _pool(items: Sequence[VQAItem], images: ImageSource, embedder: Embedder, where: str) -> _Pool:
    refs = list(dict.fromkeys(item.image for item in items))
    first = {}
    for i, item in enumerate(items):
        first.setdefault(item.image, (i, item.id))
    for ref in refs:  # load errors name the first item using the image
        try:
            images.load(ref)
        except DataError as exc:
            i, item_id = first[ref]
            raise _item_error(where, i, item_id, "image", f"cannot be loaded: {exc}") from None
    emb = embed_refs(refs, images, embedder, where=where)
    return _Pool(refs, {r: i for i, r in enumerate(refs)}, emb @ emb.T)


def _neighbour_questions(item: VQAItem, pool: _Pool,
                         by_image: dict[str, list[VQAItem]]) -> tuple[tuple[NeighbourQuestion, ...], str]:
    q = _normal(item.question)
    same = [o for o in by_image[item.image] if o.id != item.id and _normal(o.question) != q]
    source = "same-image"
    if not same:
        source = "similar-images"
        for ref in pool.ranked(item.image, by_image):
            same += [o for o in by_image[ref] if _normal(o.question) != q][:1]
            if len(same) >= N_NEIGHBOUR_QUESTIONS:
                break
    chosen = list({_normal(o.question): o for o in same}.values())[:N_NEIGHBOUR_QUESTIONS]
    return tuple(NeighbourQuestion(o.question, o.answers[0]) for o in chosen), source


def _neighbour_items(item: VQAItem, items: Sequence[VQAItem]) -> tuple[dict[str, VQAItem], bool]:
    """Items of other groups with other answers that may serve as neighbours, per image; same question preferred."""
    answers, group = _norm_answers(item), _group_key(item)
    different = [o for o in items if o.image != item.image and _group_key(o) != group
                 and not answers & _norm_answers(o)]
    same_question = [o for o in different if _normal(o.question) == _normal(item.question)]
    chosen = same_question or different
    by_ref: dict[str, VQAItem] = {}
    for other in chosen:
        by_ref.setdefault(other.image, other)
    return by_ref, bool(same_question)


def _record(item: VQAItem, items: Sequence[VQAItem], pool: _Pool, by_image: dict[str, list[VQAItem]],
            paraphrases: list[str], where: str, index: int) -> FactRecord:
    group = _group_key(item)
    paraphrase_images = spread_tiers(pool.ranked(item.image, [o.image for o in items if _group_key(o) == group]))
    neighbours, same_question = _neighbour_items(item, items)
    ranked = pool.ranked(item.image, neighbours)
    if not ranked:
        raise _item_error(where, index, item.id, "answers", "is shared by every other image, so there is no "
                          "neighbour image or alternative answer")
    # Tiers count from the most similar; for neighbours the most similar is the hard one.
    neighbour_images = {TIERS[-1 - TIERS.index(t)]: NeighbourImage(ref, neighbours[ref].answers[0])
                        for t, ref in spread_tiers(ranked).items()}
    questions, source = _neighbour_questions(item, pool, by_image)
    return FactRecord(
        id=item.id,
        image=item.image,
        question=item.question,
        answer=item.answers[0],
        alt_answer=neighbours[ranked[0]].answers[0],
        aliases=item.answers[1:],
        subject=item.subject,
        question_paraphrases=tuple(paraphrases),
        paraphrase_images=paraphrase_images,
        neighbour_questions=questions,
        neighbour_images=neighbour_images,
        meta={"neighbour_same_question": same_question, "neighbour_questions_from": source, "group": group},
    )


def build_benchmark(items: Sequence[Mapping[str, Any] | VQAItem], images: ImageSource,
                    paraphraser: str | Paraphraser = "rule", embedder: str | Embedder = "pixels",
                    n_paraphrases: int = 4, seed: int = 0, name: str = "proximity",
                    where: str = "items") -> Benchmark:
    """One `FactRecord` per item, its proximity samples drawn from the other items (see the module notes)."""
    if n_paraphrases < 0:
        raise ConfigError(f"n_paraphrases={n_paraphrases}: must be >= 0")
    parsed = parse_items(items, where)
    if len(parsed) < 2:
        raise DataError(f"{where}: needs at least two items, got {len(parsed)}")
    para_fn = get_paraphraser(paraphraser) if isinstance(paraphraser, str) else paraphraser
    embed_fn = get_embedder(embedder) if isinstance(embedder, str) else embedder
    pool = _pool(parsed, images, embed_fn, where)
    questions = list(dict.fromkeys(item.question for item in parsed))
    rewrites = dict(zip(questions, para_fn(questions, n_paraphrases, seed))) if n_paraphrases else {}
    by_image: dict[str, list[VQAItem]] = {}
    for item in parsed:
        by_image.setdefault(item.image, []).append(item)
    records = [_record(item, parsed, pool, by_image, rewrites.get(item.question, []), where, i)
               for i, item in enumerate(tqdm(parsed, desc="building records", unit="item", disable=None))]
    validate_benchmark(records, where)
    return Benchmark(name, records, images)


# -------------------------------------------------------------------------------------------------- filters


@dataclass
class FilterReport:
    """What a filter kept, out of how many, and why each dropped record went."""

    name: str
    kept: int
    total: int
    dropped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return f"{self.name}: kept {self.kept}/{self.total}"


def answer_matches(response: str, accepted: Iterable[str]) -> bool:
    """Case-insensitive containment of any accepted answer as whole words, punctuation ignored."""
    text = f" {_normal(response)} "
    return any(norm and f" {norm} " in text for norm in (_normal(a) for a in accepted))


def adapter_answer_fn(adapter: Any, max_new_tokens: int = 16) -> Callable[[list[tuple[Image.Image, str]]], list[str]]:
    """The greedy answers of a `VLMAdapter`, in the shape `correct_filter` asks for."""
    from mmunlearn.models.adapters.base import VLMInput

    def answer(pairs: list[tuple[Image.Image, str]]) -> list[str]:
        return adapter.generate([VLMInput(image, question) for image, question in pairs],
                                max_new_tokens=max_new_tokens)
    return answer


def correct_filter(benchmark: Benchmark, answer_fn: Callable[[list[tuple[Image.Image, str]]], list[str]],
                   batch_size: int = 32) -> tuple[Benchmark, FilterReport]:
    """Keep the records whose original question the model answers correctly: only known facts can be deleted."""
    report = FilterReport("correct", 0, len(benchmark))
    kept = []
    records = benchmark.records
    for start in tqdm(range(0, len(records), batch_size), desc="checking answers", unit="batch", disable=None):
        batch = records[start:start + batch_size]
        responses = answer_fn([(benchmark.image(r.image), r.question) for r in batch])
        if len(responses) != len(batch):
            raise DataError(f"{benchmark.name}: the answer function returned {len(responses)} answers for "
                            f"{len(batch)} questions")
        for record, response in zip(batch, responses):
            if answer_matches(response, record.accepted_answers):
                kept.append(record)
            else:
                report.dropped[record.id] = f"answered {response.strip()[:80]!r}, expected {record.answer!r}"
    report.kept = len(kept)
    return Benchmark(benchmark.name, kept, benchmark.images), report


def tier_similarities(benchmark: Benchmark, embedder: str | Embedder = "pixels") -> dict[str, dict[str, float]]:
    """Per record: cosine similarity of each tier's image to the original (`paraphrase.<tier>`, `neighbour.<tier>`)."""
    embed_fn = get_embedder(embedder) if isinstance(embedder, str) else embedder
    refs = image_refs(benchmark.records)
    emb = embed_refs(refs, benchmark.images, embed_fn, where=benchmark.name)
    vec = {ref: emb[i] for i, ref in enumerate(refs)}
    out = {}
    for r in benchmark.records:
        sims = {f"paraphrase.{t}": float(vec[r.image] @ vec[ref]) for t, ref in r.paraphrase_images.items()}
        sims.update({f"neighbour.{t}": float(vec[r.image] @ vec[n.image]) for t, n in r.neighbour_images.items()})
        out[r.id] = sims
    return out


def _order_problem(sims: dict[str, float], kind: str, descending: bool, eps: float) -> str | None:
    present = [(t, sims[f"{kind}.{t}"]) for t in TIERS if f"{kind}.{t}" in sims]
    for (t1, s1), (t2, s2) in zip(present, present[1:]):
        if descending and s1 + eps < s2 or not descending and s1 > s2 + eps:
            sign = "<" if descending else ">"
            return f"{kind} similarity {t1} {s1:.3f} {sign} {t2} {s2:.3f}"
    return None


def tier_consistency_filter(benchmark: Benchmark, embedder: str | Embedder = "pixels",
                            eps: float = 1e-6) -> tuple[Benchmark, FilterReport]:
    """Keep records whose tiers are ordered: paraphrases easy >= medium >= hard, neighbours the reverse."""
    sims = tier_similarities(benchmark, embedder)
    report = FilterReport("tier-consistency", 0, len(benchmark))
    kept = []
    for record in benchmark.records:
        problem = _order_problem(sims[record.id], "paraphrase", True, eps) or \
            _order_problem(sims[record.id], "neighbour", False, eps)
        if problem:
            report.dropped[record.id] = problem
        else:
            kept.append(record)
    report.kept = len(kept)
    return Benchmark(benchmark.name, kept, benchmark.images), report


# --------------------------------------------------------------------------------------------- manual review

REVIEW_COLUMNS = ("id", "question", "answer", "alt_answer", "aliases", "paraphrases", "image",
                  *(f"paraphrase_{t}" for t in TIERS), *(f"neighbour_{t}" for t in TIERS),
                  *(f"neighbour_{t}_answer" for t in TIERS), "neighbour_questions", "keep")
KEEP_YES = {"1", "yes", "y", "true", "x"}
KEEP_NO = {"", "0", "no", "n", "false"}

_REVIEW_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Review: {{ name }}</title>
<style>
body { font-family: sans-serif; margin: 1em; }
.card { border: 1px solid #bbb; border-radius: 6px; padding: .6em; margin: .6em 0; }
.card img { height: 96px; image-rendering: pixelated; border: 1px solid #ddd; }
.row { display: flex; gap: .8em; flex-wrap: wrap; }
figure { margin: 0; text-align: center; font-size: .8em; }
</style></head><body>
<h1>{{ name }}: {{ cards|length }} records</h1>
<p>Untick the records to drop, then save the kept ids (or edit the <code>keep</code> column of review.csv).</p>
<button type="button" onclick="saveKept()">Save kept ids</button>
{% for c in cards %}
<div class="card">
<label><input type="checkbox" class="keep" value="{{ c.id }}" checked> keep <b>{{ c.id }}</b></label>
<p>Q: {{ c.question }} &rarr; <b>{{ c.answer }}</b>{% if c.aliases %} (also {{ c.aliases|join(", ") }}){% endif %};
 alternative: {{ c.alt_answer }}</p>
{% if c.paraphrases %}<ul>{% for p in c.paraphrases %}<li>{{ p }}</li>{% endfor %}</ul>{% endif %}
{% if c.neighbour_questions %}<p>Neighbour questions: {% for q in c.neighbour_questions %}{{ q.question }}
 &rarr; {{ q.answer }}{% if not loop.last %}; {% endif %}{% endfor %}</p>{% endif %}
<div class="row">
{% for f in c.figures %}<figure><img src="{{ f.src }}" alt="{{ f.label }}"><figcaption>{{ f.label }}</figcaption>
</figure>{% endfor %}
</div></div>
{% endfor %}
<script>
function saveKept() {
  const ids = Array.from(document.querySelectorAll("input.keep:checked")).map(e => e.value);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([ids.join("\\n") + "\\n"], {type: "text/plain"}));
  a.download = "kept_ids.txt";
  a.click();
}
</script>
</body></html>
"""


def _review_images(benchmark: Benchmark, out: Path) -> dict[str, str]:
    """Each referenced image copied to `images/<n>.png` beside the sheet; ref -> relative path."""
    refs = image_refs(benchmark.records)
    (out / "images").mkdir(parents=True, exist_ok=True)
    paths = {}
    for n, ref in enumerate(tqdm(refs, desc="copying review images", unit="img", disable=None)):
        rel = f"images/{n:05d}.png"
        image = benchmark.image(ref)
        with atomic_file(out / rel) as tmp:
            image.save(tmp, format="PNG")
        paths[ref] = rel
    return paths


def _review_row(record: FactRecord, paths: dict[str, str]) -> dict[str, str]:
    row = {"id": record.id, "question": record.question, "answer": record.answer, "alt_answer": record.alt_answer,
           "aliases": " | ".join(record.aliases), "paraphrases": " | ".join(record.question_paraphrases),
           "image": paths[record.image],
           "neighbour_questions": " | ".join(f"{q.question} -> {q.answer}" for q in record.neighbour_questions),
           "keep": "1"}
    for t in TIERS:
        row[f"paraphrase_{t}"] = paths.get(record.paraphrase_images.get(t, ""), "")
        neighbour = record.neighbour_images.get(t)
        row[f"neighbour_{t}"] = paths[neighbour.image] if neighbour else ""
        row[f"neighbour_{t}_answer"] = neighbour.answer if neighbour else ""
    return row


def _card(record: FactRecord, paths: dict[str, str]) -> dict[str, Any]:
    figures = [{"src": paths[record.image], "label": "original"}]
    figures += [{"src": paths[ref], "label": f"paraphrase {t}"} for t in TIERS
                if (ref := record.paraphrase_images.get(t))]
    figures += [{"src": paths[n.image], "label": f"neighbour {t}: {n.answer}"} for t in TIERS
                if (n := record.neighbour_images.get(t))]
    return {"id": record.id, "question": record.question, "answer": record.answer, "aliases": record.aliases,
            "alt_answer": record.alt_answer, "paraphrases": record.question_paraphrases,
            "neighbour_questions": record.neighbour_questions, "figures": figures}


def export_review_sheet(benchmark: Benchmark, out_dir: str | Path) -> Path:
    """Write `review.csv` (edit its keep column) and `review.html` (one card per record), images beside them."""
    from jinja2 import Environment

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = _review_images(benchmark, out)

    with atomic_file(out / "review.csv") as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=REVIEW_COLUMNS)
        writer.writeheader()
        writer.writerows(_review_row(r, paths) for r in benchmark.records)
    html = Environment(autoescape=True).from_string(_REVIEW_TEMPLATE).render(
        name=benchmark.name, cards=[_card(r, paths) for r in benchmark.records])
    with atomic_file(out / "review.html") as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out


def _kept_from_csv(path: Path, text: str) -> list[str]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not {"id", "keep"} <= set(reader.fieldnames):
        raise DataError(f"{path}:1: header needs 'id' and 'keep' columns, got {reader.fieldnames}")
    kept = []
    for row in reader:
        line = reader.line_num
        rid = (row.get("id") or "").strip()
        if not rid:
            raise DataError(f"{path}:{line}: field 'id' is empty")
        keep = (row.get("keep") or "").strip().lower()
        if keep in KEEP_YES:
            kept.append(rid)
        elif keep not in KEEP_NO:
            raise DataError(f"{path}:{line}: record {rid!r}: field 'keep' is {row['keep']!r}; "
                            "use 1/yes/true/x to keep, 0/no/false/empty to drop")
    return kept


def _kept_from_json(path: Path, text: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of record ids, got {type(data).__name__}")
    for i, value in enumerate(data):
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
            raise DataError(f"{path}: entry #{i}: expected a record id (string), got {value!r}")
    return [str(v).strip() for v in data]


def import_kept_ids(path: str | Path) -> list[str]:
    """Ids to keep from a review CSV (keep = 1/yes/true/x), a JSON list or a text file (one id a line, # comments)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({' '.join(str(exc).split())})") from None
    if path.suffix.lower() == ".csv":
        ids = _kept_from_csv(path, text)
    elif path.suffix.lower() == ".json":
        ids = _kept_from_json(path, text)
    else:
        ids = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return list(dict.fromkeys(ids))


def apply_review(benchmark: Benchmark, ids: Sequence[str]) -> Benchmark:
    """The records the review kept, in benchmark order; an id the benchmark lacks is an error, not a skip."""
    known = {r.id for r in benchmark.records}
    unknown = [i for i in ids if i not in known]
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise DataError(f"{benchmark.name}: the review keeps record id(s) the benchmark lacks: {shown}")
    return replace(benchmark, records=[r for r in benchmark.records if r.id in set(ids)])
