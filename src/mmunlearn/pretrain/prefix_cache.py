"""Hidden states after a language model's frozen bottom layers, kept per distinct text-only sequence.

When only the top decoder layers train (LoRA there, everything below frozen), a text-only sequence's
states below them never change. The curriculum shows each text fact many times, so passing it through
the bottom layers once and reusing the states makes those steps several times cheaper on a CPU, where
the forward pass is most of the cost. Rows are right-padded and attention is causal, so a row's states
do not depend on its batch mates.
"""

from __future__ import annotations

import torch
from transformers.masking_utils import create_causal_mask

from mmunlearn.models.cache_name import CACHE


class PrefixCache:
    def __init__(self, model, n_frozen: int, batch_size: int = 64) -> None:
        self.lm = model.model.language_model
        self.n_frozen, self.batch_size = n_frozen, batch_size
        frozen = [self.lm.embed_tokens, *self.lm.layers[:n_frozen]]
        trainable = [n for m in frozen for n, p in m.named_parameters() if p.requires_grad]
        if trainable:
            raise ValueError(f"prefix cache over {n_frozen} layers, but {trainable[0]} below them trains")
        self._states: dict[tuple[int, ...], torch.Tensor] = {}

    def _run(self, hidden: torch.Tensor, mask: torch.Tensor, layers) -> torch.Tensor:
        position_ids = torch.arange(hidden.shape[1]).unsqueeze(0)
        causal = create_causal_mask(config=self.lm.config, inputs_embeds=hidden, attention_mask=mask,
                                    position_ids=position_ids, **{CACHE: None})
        position_embeddings = self.lm.rotary_emb(hidden, position_ids=position_ids)
        for layer in layers:
            hidden = layer(hidden, attention_mask=causal, position_embeddings=position_embeddings,
                           position_ids=position_ids)
        return hidden

    @staticmethod
    def _pad(rows: list[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        return ids, mask

    @torch.no_grad()
    def _fill(self, rows: list[tuple[int, ...]]) -> None:
        missing = sorted({r for r in rows if r not in self._states}, key=len)
        for i in range(0, len(missing), self.batch_size):
            group = missing[i:i + self.batch_size]
            ids, mask = self._pad(group)
            hidden = self._run(self.lm.embed_tokens(ids), mask, self.lm.layers[:self.n_frozen])
            for row, r in enumerate(group):
                self._states[r] = hidden[row, :len(r)].clone()

    def __len__(self) -> int:
        return len(self._states)

    def last_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The LM's final (normed) hidden states for a right-padded, text-only batch; the top layers run
        with gradients, the bottom ones come from the cache."""
        rows = [tuple(ids[m.bool()].tolist()) for ids, m in zip(input_ids, attention_mask)]
        self._fill(rows)
        hidden = torch.zeros((*input_ids.shape, self.lm.config.hidden_size))
        for i, r in enumerate(rows):
            hidden[i, :len(r)] = self._states[r]
        return self.lm.norm(self._run(hidden, attention_mask, self.lm.layers[self.n_frozen:]))
