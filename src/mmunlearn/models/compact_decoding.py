"""Greedy (or row-seeded sampled) decoding that drops each row from the batch once it has stopped.

`model.generate` keeps every row of a batch until the last one stops or `max_new_tokens` is reached: a batch of
256 short answers where one runs on to the limit costs the limit's number of steps for all 256 rows. The
attacks here sample thousands of answers of 2-3 tokens with a limit of 8, so most decoding steps were spent on
finished rows. This loop runs the same steps as `generate` (prefill, then one token per step through the KV
cache, positions from the attention mask, logits of the last position only) on the rows still going: a
finished row's cache entries are dropped and its later steps never run. Each row's tokens are those
`generate` gives it, up to floating-point noise of the smaller batches (tests compare the texts).

It covers what the adapters ask of `generate` (no logits processors but the row-seeded sampler); a model whose
generation config would add its own (repetition penalty, bad words, a minimum length ...) goes through
`generate` instead (`plain_generation_config`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from transformers import GenerationConfig

from mmunlearn.models.cache_name import CACHE
from mmunlearn.models.row_sampling import RowSeededSampler

# Generation-config fields from which `generate` builds logits processors of its own under greedy decoding.
_PROCESSOR_FIELDS = (
    "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "min_length", "min_new_tokens", "sequence_bias", "forced_bos_token_id", "forced_eos_token_id",
    "suppress_tokens", "begin_suppress_tokens", "exponential_decay_length_penalty", "renormalize_logits",
    "guidance_scale", "watermarking_config", "stop_strings",
)


def plain_generation_config(config: GenerationConfig | None) -> bool:
    """True when greedy `generate` with this config applies no logits processor of its own."""
    if config is None:
        return True
    default = GenerationConfig()
    return all(getattr(config, f, None) == getattr(default, f, None) for f in _PROCESSOR_FIELDS)


@torch.no_grad()
def decode_dropping_finished(model: Any, inputs: dict[str, Any], max_new_tokens: int, stop_ids: Sequence[int],
                             forward_kwargs: dict[str, Any], sampler: RowSeededSampler | None = None,
                             on_rows: Callable[[list[int]], None] | None = None,
                             prefill_scope: Callable[[], AbstractContextManager[Any]] = nullcontext,
                             expand: torch.Tensor | None = None) -> list[list[int]]:
    """New token ids per row (each ending at its first stop token, or at `max_new_tokens`).

    `inputs`: left-padded `input_ids` / `attention_mask` plus the model's other inputs, or, with a KV cache
    under `CACHE` holding every prompt position but the last, just the ids and mask (`_prefilled`). `on_rows`
    hears the original row indices still in the batch before every forward pass that follows a drop, so a
    per-row router (one edit per fact) follows the rows. The prompt's forward pass runs inside
    `prefill_scope()`, which may skip work whose output only the last position would read.

    `expand` (several samples of one prompt): row k of the output decodes from prompt `expand[k]` of `inputs`;
    each prompt runs once, its next-token scores and KV cache are copied to its rows, and `on_rows` hears all
    of them (0..len(expand) - 1) before the first step that runs them.
    """
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    n = ids.shape[0]
    device = ids.device
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as `generate` derives them
    cache = inputs.get(CACHE)
    if cache is None:
        with prefill_scope():
            out = model(**inputs, position_ids=positions, use_cache=True, **forward_kwargs)
    else:
        out = model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:],
                    use_cache=True, **{CACHE: cache}, **forward_kwargs)
    cache = out[CACHE]
    logits = out.logits[:, -1]
    # The prompts' cache rows each sample row reads; copied once, after the first step's drops.
    pending: torch.Tensor | None = None
    if expand is not None:
        pending = expand.to(device)
        logits, mask, positions = logits[pending], mask[pending], positions[pending]
        n = int(pending.shape[0])
    stops = torch.tensor(list(stop_ids), device=device)
    alive = torch.arange(n, device=device)
    next_position = positions[:, -1] + 1
    seeds = sampler.seeds.to(device) if sampler is not None else None
    tokens: list[list[int]] = [[] for _ in range(n)]
    for step in range(max_new_tokens):
        scores = logits.to(dtype=torch.float32, copy=True)
        if sampler is not None:
            scores = sampler.perturb(scores, seeds, step)
        chosen = scores.argmax(-1)
        for row, token in zip(alive.tolist(), chosen.tolist()):
            tokens[row].append(token)
        going = ~torch.isin(chosen, stops)
        if step == max_new_tokens - 1 or not bool(going.any()):
            break
        if not bool(going.all()):
            keep = going.nonzero().squeeze(1)
            alive, chosen, mask, next_position = alive[keep], chosen[keep], mask[keep], next_position[keep]
            if pending is None:
                cache.batch_select_indices(keep)
            else:
                pending = pending[keep]
            if seeds is not None:
                seeds = seeds[keep]
            if on_rows is not None:
                on_rows(alive.tolist())
        elif pending is not None and on_rows is not None:
            on_rows(alive.tolist())
        if pending is not None:
            cache.batch_select_indices(pending)
            pending = None
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        out = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=next_position[:, None],
                    use_cache=True, **{CACHE: cache}, **forward_kwargs)
        logits = out.logits[:, -1]
        next_position = next_position + 1
    return tokens
