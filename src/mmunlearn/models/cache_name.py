"""The name transformers gives a model's KV cache, in its outputs and as a keyword.

transformers 5.x renamed `past_key_values` to `cache` (outputs, `generate`, `create_causal_mask`), keeping the
old name as a deprecated alias that warns on every run; the package supports the whole 5.x range, so the name
is read from the installed version once, here.
"""

from __future__ import annotations

from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
