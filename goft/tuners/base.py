"""What goft's peft methods share: the tuner base with default target modules per architecture."""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTuner

# Default target modules per architecture: every projection of attention and MLP. A strict Givens adapter costs
# d − 1 parameters per layer, so adapting all of them stays far below a LoRA r = 1 budget.
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


TARGET_MODULES_BY_MODEL_TYPE: dict[str, list[str]] = {
    **{
        model_type: _LLAMA_LIKE
        for model_type in (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "granite",
            "smollm3",
            "deepseek_v2",
            "cohere",
        )
    },
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
}


def check_default_target_modules(peft_config, model_config: dict, method: str) -> None:
    """peft fills an unset ``target_modules`` from the tuner's ``target_module_mapping``; for a model type it has no
    default for, this says what to set instead of peft's generic error."""
    model_type = model_config.get("model_type")
    if peft_config.target_modules is None and model_type not in TARGET_MODULES_BY_MODEL_TYPE:
        raise ValueError(
            f"{method} has no default target_modules for model type {model_type!r}; set target_modules, "
            "e.g. target_modules='all-linear' or a list of module names."
        )


class GoftTuner(BaseTuner):
    """What goft's peft methods share: default target modules per architecture (`TARGET_MODULES_BY_MODEL_TYPE`),
    which peft fills in, with an error naming the fix for an architecture that has none."""

    target_module_mapping = TARGET_MODULES_BY_MODEL_TYPE

    def _prepare_adapter_config(self, peft_config, model_config: dict):
        check_default_target_modules(peft_config, model_config, type(peft_config).__name__)
        return super()._prepare_adapter_config(peft_config, model_config)
