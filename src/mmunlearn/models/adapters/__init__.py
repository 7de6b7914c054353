"""Model adapters: one interface (`VLMAdapter`) over Hugging Face VLM families, picked by `model_type`.

Importing this package registers every family module; `load_adapter(path_or_id)` is the entry point.
"""

from mmunlearn.models.adapters import (  # noqa: F401  (registers)
    gemma3,
    idefics2,
    idefics3,
    internvl,
    llava,
    llava_next,
    llava_onevision,
    mistral3,
    mllama,
    paligemma,
    qwen2_vl,
    qwen3_vl,
)
from mmunlearn.models.adapters.base import (
    AnswerScore,
    FlopCount,
    ModuleNames,
    TokenCount,
    VLMAdapter,
    VLMBatch,
    VLMInput,
    adapter_class,
    known_families,
    load_adapter,
    register_adapter,
)
from mmunlearn.models.adapters.distributed import evaluate_sharded, process_state

__all__ = [
    "AnswerScore",
    "FlopCount",
    "ModuleNames",
    "TokenCount",
    "VLMAdapter",
    "VLMBatch",
    "VLMInput",
    "adapter_class",
    "evaluate_sharded",
    "known_families",
    "load_adapter",
    "process_state",
    "register_adapter",
]
