"""Nothing accepted and then ignored: a key the recipe sets must shape the run. Keys that take effect only beside
another key's value (LoRA's sizes with `adapter: lora`, the 4-bit options with `load_in_4bit`, the retention files
with the measure that reads them, ...) are refused when that value is not there, with one line saying what would make
them count; otherwise the model card and run record would list them as if they had shaped the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from goft.errors import RecipeError

ADAPTER_KEYS_BY_METHOD = {
    "lora": (
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "lora_modules_to_save",
        "lora_target_parameters",
        "lora_task_type",
        "use_rslora",
        "use_dora",
    ),
    "givens": ("givens_quasi", "givens_scaling", "givens_max_angle"),
    "sorsa": ("sorsa_r", "sorsa_gamma"),
    "hra": ("hra_r", "hra_apply_gs", "hra_lambda"),
    "oft": ("oft_block_size", "oft_use_cayley_neumann"),
    "boft": ("boft_block_size", "boft_n_butterfly_factor"),
    "road": ("road_variant", "road_group_size"),
}
# keys that shape a new adapter (none of them applies when an adapter folder is continued)
NEW_ADAPTER_KEYS = (
    "adapter",
    "adapter_target_modules",
    "givens_penalty_weight",
    *(key for keys in ADAPTER_KEYS_BY_METHOD.values() for key in keys),
)


USE_PEFT_TOO = " (or TRL's `use_peft: true`)"


@dataclass(frozen=True)
class Dependence:
    """`keys` take effect only when `active(values, stage)`; `needs` says, in words, what makes them count."""

    keys: tuple[str, ...]
    active: Callable[[dict, str], bool]
    needs: str


def _adapter(method: str) -> Callable[[dict, str], bool]:
    return lambda values, stage: values.get("adapter") == method


def _any_of(*keys: str) -> Callable[[dict, str], bool]:
    return lambda values, stage: any(values.get(key) not in (None, False, 0, 0.0) for key in keys)


DEPENDENCES = (
    *(
        Dependence(keys, _adapter(method), f"`adapter: {method}`" + (USE_PEFT_TOO if method == "lora" else ""))
        for method, keys in ADAPTER_KEYS_BY_METHOD.items()
    ),
    Dependence(
        ("givens_penalty_weight",),
        lambda values, stage: values.get("adapter") == "givens" and bool(values.get("givens_quasi")),
        "`givens_quasi: true` (qGOFT's penalty)",
    ),
    Dependence(
        ("bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "bnb_4bit_quant_storage", "use_bnb_nested_quant"),
        _any_of("load_in_4bit"),
        "`load_in_4bit: true`",
    ),
    Dependence(("ref_model_sync_steps", "ref_model_mixup_alpha"), _any_of("sync_ref_model"), "`sync_ref_model: true`"),
    Dependence(("retention_questions",), _any_of("retention_eval"), "`retention_eval: true`"),
    Dependence(("general_text", "forgetting_texts"), _any_of("forgetting_budget"), "a `forgetting_budget`"),
    Dependence(
        ("measure_steps",),
        _any_of("forgetting_budget", "task_target_nll"),
        "a `forgetting_budget` or a `task_target_nll`",
    ),
    Dependence(
        ("replay_prompts", "replay_answer_tokens"),
        _any_of("replay_share", "anchor_weight"),
        "`replay_share` or `anchor_weight`",
    ),
    Dependence(("anchor_batch_size",), _any_of("anchor_weight"), "an `anchor_weight`"),
    Dependence(
        ("max_prompt_length",),
        lambda values, stage: stage == "dpo",
        "the DPO stage (SFT cuts whole sequences at `max_length`)",
    ),
)


def refuse_idle_keys(keys, values: dict, stage: str) -> None:
    """Each key the recipe sets (`keys`) takes effect with the run's `values` in `stage`, or is refused."""
    for dependence in DEPENDENCES:
        for key in dependence.keys:
            if key in keys and not dependence.active(values, stage):
                raise RecipeError(
                    f"`{key}` is set, but it takes effect only with {dependence.needs}, which this run does not "
                    f"have: it would be recorded without shaping the run. Drop `{key}`, or set {dependence.needs}."
                )


def refuse_new_adapter_keys(keys, adapter_folder: str) -> None:
    """A continued adapter keeps its own config: keys that shape a new adapter would be ignored."""
    given = [key for key in keys if key in NEW_ADAPTER_KEYS]
    if given:
        listed = ", ".join(f"`{key}`" for key in given)
        raise RecipeError(
            f"{listed} shape{'s' if len(given) == 1 else ''} a new adapter, but `model_name_or_path` is the adapter "
            f"folder {adapter_folder!r}, which is continued with its own config: drop {listed}, or train a new "
            "adapter from the base model."
        )


def refuse_local_revision(revision: str | None, model_path: str) -> None:
    """`model_revision` picks a revision of a Hub repo; a local model folder has only the files it holds."""
    if revision not in (None, "", "main") and os.path.exists(model_path):
        raise RecipeError(
            f"`model_revision: {revision}` picks a revision of a Hub repo, but the model is read from the local "
            f"folder {model_path!r}, which has one: drop `model_revision`, or check out that revision there."
        )
