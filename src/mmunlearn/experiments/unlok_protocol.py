"""The UnLOK-VQA per-fact protocol: measure before, edit, measure and attack after, restore.

Measurements of the unedited model are taken once per fact and shared by every defense (the model is
restored bit for bit between edits). Each phase yields plain JSON rows, one per (fact, defense, what):
`measure` rows hold probabilities, greedy answers and their correctness; `attack` rows hold an
`AttackOutcome`. Aggregation lives in `unlok_summary`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmunlearn.attacks.context import AttackContext, Route, StateCache, routing
from mmunlearn.attacks.prefetch import AboveDown, prefetch
from mmunlearn.attacks.registry import Attack, Slot
from mmunlearn.attacks.relearning import Relearning
from mmunlearn.config_checks import at_least
from mmunlearn.data.records import Benchmark, FactRecord
from mmunlearn.defenses.batched_editor import BatchedEditor
from mmunlearn.defenses.editor import EditExamples, Editor, lowest_layer
from mmunlearn.defenses.losses import Defense
from mmunlearn.errors import ConfigError
from mmunlearn.metrics.accuracy import contains_answer
from mmunlearn.models.adapters.base import LayerInput, VLMAdapter, VLMInput
from mmunlearn.models.layer_spec import resolve_layers


@dataclass(frozen=True)
class ProtocolConfig:
    """Sizes and strings of the protocol (the defenses, attacks and editor are configured apart)."""

    seed: int = field(default=0, metadata=at_least(0))
    empty_answer: str = "I don't know"
    n_random: int = field(default=10, metadata=at_least(0))
    n_retain: int = field(default=4, metadata=at_least(0))
    max_new_tokens: int = field(default=8, metadata=at_least(1))


@dataclass
class Probe:
    """One generation or scoring query of a measurement: (image ref, question, accepted answers)."""

    name: str
    image: str
    question: str
    accepted: tuple[str, ...]


@dataclass
class FactPlan:
    """Everything the protocol asks about one fact, fixed before any edit (so pre and post match)."""

    record: FactRecord
    generations: list[Probe]
    random_ids: list[str]
    retain_ids: list[str]
    score_prompts: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (image ref, question)


def _sample_others(benchmark: Benchmark, record: FactRecord, n: int, tag: str, seed: int,
                   exclude: Sequence[str] = ()) -> list[FactRecord]:
    others = [r for r in benchmark.records if r.id != record.id and r.id not in exclude]
    rng = random.Random(f"{tag}/{seed}/{record.id}")
    return rng.sample(others, min(n, len(others)))


def plan_fact(benchmark: Benchmark, record: FactRecord, config: ProtocolConfig) -> FactPlan:
    """The fact's generation probes (the fact, its neighbours, random facts) and score prompts."""
    probes = [Probe("fact", record.image, record.question, record.accepted_answers)]
    probes += [Probe(f"paraphrase/{i}", record.image, q, record.accepted_answers)
               for i, q in enumerate(record.question_paraphrases[:1])]
    probes += [Probe(f"image/{t}", ref, record.question, record.accepted_answers)
               for t, ref in record.paraphrase_images.items()]
    probes += [Probe(f"neighbour_question/{i}", record.image, nq.question, (nq.answer,))
               for i, nq in enumerate(record.neighbour_questions)]
    probes += [Probe(f"neighbour_image/{t}", ni.image, record.question, (ni.answer,))
               for t, ni in record.neighbour_images.items()]
    retain = _sample_others(benchmark, record, config.n_retain, "retain", config.seed)
    randoms = _sample_others(benchmark, record, config.n_random, "random", config.seed,
                             exclude=[r.id for r in retain])
    probes += [Probe(f"random/{r.id}", r.image, r.question, r.accepted_answers) for r in randoms]
    prompts = {"rewrite": (record.image, record.question)}
    if record.question_paraphrases:
        prompts["paraphrase"] = (record.image, record.question_paraphrases[0])
    return FactPlan(record, probes, [r.id for r in randoms], [r.id for r in retain], prompts)


def target_string(defense: Defense, record: FactRecord, config: ProtocolConfig) -> str:
    return {"answer": record.answer, "alt": record.alt_answer, "empty": config.empty_answer}[defense.target]


class Protocol:
    """Runs the per-fact protocol on one adapter for a list of defenses and attacks."""

    def __init__(self, adapter: VLMAdapter, benchmark: Benchmark, editor: Editor | None, defenses: dict[str, Defense],
                 attacks: dict[str, Attack], config: ProtocolConfig, relearn: Relearning | None = None,
                 edit_overrides: dict[str, dict[str, Any]] | None = None, edited_from: int | None = None,
                 edited_modules: Sequence[str] = ()) -> None:
        """`edited_modules`: the modules every edit changes; `edited_from`: the lowest decoder layer among them
        (by default read from `edited_modules`; None: unknown). Below it every edited model equals the unedited
        one, so the probe's training states resume there (`prime`); when the edits change nothing but that
        layer's MLP down-projection, they resume just above it."""
        self.adapter = adapter
        self.benchmark = benchmark
        self.editor = editor
        self.defenses = defenses
        self.attacks = attacks
        self.config = config
        self.relearn = relearn
        self.edit_overrides = edit_overrides or {}  # defense name -> {lr, steps} replacing the editor's
        self._pre_cache: StateCache = {}  # probe states of the unedited model, shared by every fact
        self.edited_modules = tuple(edited_modules)
        if edited_from is None and self.edited_modules:
            edited_from = lowest_layer(adapter, self.edited_modules)
        self.edited_from = edited_from
        # record id -> input of layer `edited_from` on the unedited model (or the rows above its down-projection)
        self._layer_inputs: dict[str, LayerInput] | AboveDown = {}
        self._check_empty_answer()

    def _check_empty_answer(self) -> None:
        tok = self.adapter.tokenizer
        if tok.unk_token_id is not None and tok.unk_token_id in tok(self.config.empty_answer,
                                                                    add_special_tokens=False)["input_ids"]:
            raise ConfigError(f"unlok.empty_answer {self.config.empty_answer!r} has words the model's tokenizer "
                              "does not know; pick a response in its vocabulary")

    def prime(self) -> None:
        """Hidden states of every record on the unedited model, in one fixed batch order.

        The probe attack reads them for every fact; computing them up front (rather than as facts happen to
        need them) makes each fact's result independent of which facts ran before, so a resumed run equals an
        uninterrupted one.
        """
        records = self.benchmark.records
        items = [VLMInput(self.benchmark.image(r.image), r.question) for r in records]
        states = self.adapter.hidden_states(items)
        ctx = AttackContext(self.adapter, self.benchmark, records[0], seed=self.config.seed)
        for record, h in zip(records, states):
            self._pre_cache[record.id] = (h, ctx.first_answer_token(record))
        # Every edited model's probe states (the other facts' prompts, once per fact and defense) are most of
        # the attacks' forward passes; the layers below the edit are the unedited model's, so those states
        # start from the edited layer's stored inputs (same values, the lower layers skipped).
        frm = self.edited_from
        if "probe" not in self.attacks or frm is None:
            return
        ids = [r.id for r in records]
        if self.edited_modules == (self.adapter.module_names().mlp_down[frm],) and \
                self.adapter.resumes_after_mlp_down(frm):
            # Every edit is a delta on this projection alone: the layer's attention and the rest of its MLP are
            # the unedited model's too, so each state starts from the residual plus the edited projection.
            self._layer_inputs = AboveDown(self.adapter.mlp_down_inputs(items, frm), {i: k for k, i in enumerate(ids)})
        elif self.adapter.resumes_at_layer and 1 <= frm < self.adapter.num_layers:
            self._layer_inputs = dict(zip(ids, self.adapter.layer_inputs(items, frm)))

    # ------------------------------------------------------------------ measurements

    def measure(self, plan: FactPlan, defense: Defense | None) -> dict[str, Any]:
        """Greedy answers to every probe and target probabilities on the score prompts."""
        return self.measure_many([plan], defense)[0]

    def measure_many(self, plans: Sequence[FactPlan], defense: Defense | None,
                     route: Route | None = None) -> list[dict[str, Any]]:
        """`measure` for several facts in one generation and one scoring call (fact i routed as owner i)."""
        gen_items, gen_owner = [], []
        score_items, score_keys, score_owner = [], [], []
        for i, plan in enumerate(plans):
            record = plan.record
            gen_items += [VLMInput(self.benchmark.image(p.image), p.question) for p in plan.generations]
            gen_owner += [i] * len(plan.generations)
            targets = {"answer": record.answer, "alt": record.alt_answer, "empty": self.config.empty_answer}
            for prompt_name, (image, question) in plan.score_prompts.items():
                for target_name, text in targets.items():
                    score_items.append(VLMInput(self.benchmark.image(image), question, text))
                    score_keys.append(f"{prompt_name}/{target_name}")
            for k, nq in enumerate(record.neighbour_questions[:1]):
                score_items.append(VLMInput(self.benchmark.image(record.image), nq.question, nq.answer))
                score_keys.append(f"neighbour/{k}")
            score_owner += [i] * (len(score_keys) - len(score_owner))
        with routing(route, gen_owner):
            answers = self.adapter.generate(gen_items, max_new_tokens=self.config.max_new_tokens)
        with routing(route, score_owner):
            scores = self.adapter.answer_logprobs(score_items)
        rows = []
        for i, plan in enumerate(plans):
            mine = [a for a, o in zip(answers, gen_owner) if o == i]
            logprob = {k: s.total - (s.logprobs[-1] if len(s.logprobs) > 1 else 0.0)
                       for k, s, o in zip(score_keys, scores, score_owner) if o == i}
            rows.append({"type": "measure", "fact": plan.record.id, "defense": defense.name if defense else "none",
                         "answers": dict(zip([p.name for p in plan.generations], mine)),
                         "correct": {p.name: contains_answer(a, p.accepted) for p, a in zip(plan.generations, mine)},
                         "logprob": logprob})
        return rows

    def attack_all(self, plan: FactPlan, defense: Defense | None, cache: StateCache) -> list[dict[str, Any]]:
        return self.attack_many([plan], defense, [cache])[0]

    def attack_many(self, plans: Sequence[FactPlan], defense: Defense | None, caches: Sequence[StateCache],
                    route: Route | None = None, slot: Slot | None = None,
                    ) -> list[list[dict[str, Any]]]:
        """Every attack on every fact: the model readouts of all of them in merged calls (`prefetch`), then
        each attack on all facts (`Attack.run_many`: whatever reads fact i's model does so inside `slot(i)`), then
        relearning for all of them at once (fact i through slot i of the relearner's router)."""
        contexts = [AttackContext(self.adapter, self.benchmark, p.record, seed=self.config.seed, state_cache=c)
                    for p, c in zip(plans, caches)]
        prefetch(contexts, list(self.attacks.values()), route, self._layer_inputs if defense else None)
        label = defense.name if defense else "none"
        outcomes = {name: attack.run_many(contexts, slot) for name, attack in self.attacks.items()}
        out = [[{"type": "attack", "fact": plan.record.id, "defense": label, **outcomes[name][i].to_json(),
                 "attack": name} for name in self.attacks] for i, plan in enumerate(plans)]
        if self.relearn is not None:
            relearned = self.relearn.attack_many(self.benchmark, [p.record for p in plans])
            for rows, plan, result in zip(out, plans, relearned):
                rows.append({"type": "attack", "fact": plan.record.id, "defense": label, **result})
        return out

    # ------------------------------------------------------------------ edits

    def edit_examples(self, plan: FactPlan, defense: Defense) -> EditExamples:
        record = plan.record
        image = self.benchmark.image(record.image)
        target = target_string(defense, record, self.config)
        forget = [VLMInput(image, f"{prefix}{record.question}", target) for prefix in defense.prompt_prefixes()]
        retain = [VLMInput(self.benchmark.image(r.image), r.question, r.answer)
                  for r in (self.benchmark.by_id(i) for i in plan.retain_ids)]
        return EditExamples(forget, retain)

    def lens_layers(self, defense: Defense) -> list[int] | None:
        if not defense.needs_lens:
            return None
        spec = getattr(defense, "layers", "top_half")
        return resolve_layers(spec, self.adapter.num_layers + 1, what=f"defense {defense.name}.layers")

    def run_group(self, records: Sequence[FactRecord], batched: BatchedEditor,
                  progress: Callable[[str], None] | None = None) -> list[list[dict[str, Any]]]:
        """`run_fact` for several facts, each defense editing all of them at once (one delta per fact), and
        every measurement and attack of the group in merged calls routed to each fact's delta.

        Rows come out per fact in the same order as `run_fact`'s; results equal sequential edits up to
        floating-point differences from batching. `progress(phase)` is called after each model state.
        """
        plans = [plan_fact(self.benchmark, r, self.config) for r in records]
        measures = self.measure_many(plans, None)
        attacks = self.attack_many(plans, None, [self._pre_cache] * len(plans))
        rows = [[m, *a] for m, a in zip(measures, attacks)]
        if progress:
            progress("none")
        for defense in self.defenses.values():
            overrides = self.edit_overrides.get(defense.name, {})
            logs = batched.edit_many(defense, [self.edit_examples(p, defense) for p in plans],
                                     self.lens_layers(defense), **overrides)
            try:
                measures = self.measure_many(plans, defense, batched.routed)
                attacks = self.attack_many(plans, defense, [{} for _ in plans], batched.routed, batched.slot)
            finally:
                batched.restore()
            for i, (m, a) in enumerate(zip(measures, attacks)):
                m["edit"] = {"losses": logs[i].losses}
                rows[i] += [m, *a]
            if progress:
                progress(defense.name)
        return rows

    def run_fact(self, record: FactRecord) -> list[dict[str, Any]]:
        """All rows of one fact: pre measures and attacks, then per defense edit, measures, attacks, restore."""
        if self.editor is None:
            raise ConfigError("run_fact needs a sequential editor; use run_group with a BatchedEditor")
        plan = plan_fact(self.benchmark, record, self.config)
        rows = [self.measure(plan, None), *self.attack_all(plan, None, self._pre_cache)]
        for defense in self.defenses.values():
            overrides = self.edit_overrides.get(defense.name, {})
            with self.editor.edited(defense, self.edit_examples(plan, defense), self.lens_layers(defense),
                                    **overrides) as log:
                row = self.measure(plan, defense)
                row["edit"] = {"losses": log.losses}
                rows.append(row)
                rows += self.attack_all(plan, defense, {})
        return rows
