"""Sampling where each row's draws depend on its own seed only, not on the batch it runs in.

`torch.multinomial` draws from one RNG stream for the whole batch, so a row's samples change when other
rows join its batch. Attacks that sample many prompts for many facts want to merge all of them into one
`generate` call and still get each prompt's samples exactly as if it ran alone. The Gumbel-max trick gives
that: argmax(log p / T + G) with G ~ Gumbel(0, 1) i.i.d. per token is an exact draw from softmax(log p / T),
and G here comes from a counter-based hash of (row seed, step, token id), so a greedy decode over the
perturbed scores samples each row from its own stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, TopPLogitsWarper

_MASK = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The murmur3 finaliser on int64 tensors holding 32-bit values: a bijection with full avalanche."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _MASK
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _MASK
    return x ^ (x >> 16)


def uniform_noise(seeds: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """U(0, 1) values [rows, vocab] from (seed, step, token): the same for a row wherever it runs (float64)."""
    row = _mix32(_mix32((seeds.to(torch.int64) & _MASK) ^ ((step * 0x9E3779B9 + 0x7F4A7C15) & _MASK)))
    tokens = (torch.arange(vocab, dtype=torch.int64, device=seeds.device) * 0x165667B1) & _MASK
    bits = _mix32(row[:, None] ^ tokens[None, :])  # one full-size round: the row key is already well mixed
    return (bits.to(torch.float64) + 0.5) / 2.0**32


def row_seeds(seed: int, n: int) -> list[int]:
    """`n` distinct 31-bit seeds derived from one call seed: item i's draws depend on (seed, i) only."""
    out = []
    for i in range(n):
        digest = hashlib.blake2b(f"{int(seed)}/{i}".encode(), digest_size=4).digest()
        out.append(int.from_bytes(digest, "little") & 0x7FFFFFFF)
    return out


class RowSeededSampler(LogitsProcessor):
    """Temperature, nucleus filtering, then per-row Gumbel noise; used with greedy decoding it samples.

    `prompt_length` is the padded prompt length of the batch, so the step counter starts at 0 for the first
    new token whatever the padding.
    """

    def __init__(self, seeds: Sequence[int], prompt_length: int, temperature: float = 1.0,
                 top_p: float = 1.0) -> None:
        self.seeds = torch.tensor([int(s) for s in seeds], dtype=torch.int64)
        self.prompt_length = int(prompt_length)
        self.temperature = float(temperature)
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != self.seeds.shape[0]:
            raise ValueError(f"{input_ids.shape[0]} rows for {self.seeds.shape[0]} seeds")
        return self.perturb(scores, self.seeds.to(scores.device), input_ids.shape[1] - self.prompt_length)

    def perturb(self, scores: torch.Tensor, seeds: torch.Tensor, step: int) -> torch.Tensor:
        """The scores of rows drawn from streams `seeds` at new-token `step`: their argmax is the sample."""
        logits = scores.float() / self.temperature
        if self.top_p is not None:
            logits = self.top_p(None, logits)
        u = uniform_noise(seeds, step, scores.shape[-1])
        gumbel = -torch.log(-torch.log(u))
        return (logits.double() + gumbel).to(scores.dtype)
