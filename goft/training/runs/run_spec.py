"""What shapes a run, recorded in every checkpoint, so that resuming with other settings is never silent.

A run's spec is every recipe value that changes what is trained (every key but those of `NOT_SHAPING`: logging,
saving, evaluation, the Hub, process plumbing), a fingerprint of its data (a sha256 of each split's rows) and its
number of processes. Each checkpoint's completion marker carries the spec (see `safeguards`); a rerun that would
resume from a checkpoint compares its own spec with it and refuses differences, listed, unless the recipe sets
`resume_with_changes: true`. Then the changes take effect from the resumed step, including the optimizer settings
that the checkpoint's optimizer and scheduler state would otherwise bring back (`ResumeChangesMixin`), and the run
records them (the card lists them with the step).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os

from goft.data.loading import rows_fingerprint
from goft.errors import RecipeError

logger = logging.getLogger(__name__)

SPEC_KEY = "run_spec"

NOT_SHAPING = frozenset(
    {
        # where and how the run writes, logs, evaluates and publishes
        "output_dir",
        "overwrite_output_dir",
        "resume_from_checkpoint",
        "resume_with_changes",
        "logging_strategy",
        "logging_steps",
        "logging_first_step",
        "log_on_each_node",
        "logging_nan_inf_filter",
        "log_level",
        "log_level_replica",
        "disable_tqdm",
        "report_to",
        "run_name",
        "project",
        "trackio_space_id",
        "trackio_bucket_id",
        "logging_dir",  # transformers 4 (5 reads $TENSORBOARD_LOGGING_DIR, see logging_targets)
        "trackio_static_space_id",
        "include_num_input_tokens_seen",
        "eval_strategy",
        "eval_steps",
        "eval_delay",
        "per_device_eval_batch_size",
        "prediction_loss_only",
        "eval_on_start",
        "eval_do_concat_batches",
        "eval_use_gather_object",
        "eval_accumulation_steps",
        "include_for_metrics",
        "batch_eval_metrics",
        "eval_packing",
        "bf16_full_eval",
        "fp16_full_eval",
        "save_only_model",
        "save_strategy",
        "save_steps",
        "save_on_each_node",
        "save_total_limit",
        "enable_jit_checkpoint",
        "push_to_hub",
        "hub_token",
        "hub_private_repo",
        "hub_model_id",
        "hub_strategy",
        "hub_always_push",
        "hub_revision",
        "load_best_model_at_end",
        "metric_for_best_model",
        "greater_is_better",
        "restore_callback_states_from_checkpoint",
        "task_eval_samples",
        "retention_eval",
        "retention_questions",
        "skip_memory_metrics",
        "debug",
        "do_train",
        "do_eval",
        "do_predict",
        # process and memory plumbing that does not change the result
        "local_rank",
        "use_cpu",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "dataloader_multiprocessing_context",
        "ddp_find_unused_parameters",
        "ddp_bucket_cap_mb",
        "ddp_broadcast_buffers",
        "ddp_static_graph",
        "ddp_backend",
        "ddp_timeout",
        "torch_empty_cache_steps",
        "gradient_checkpointing",
        "gradient_checkpointing_kwargs",
        "activation_offloading",
        "accelerator_config",
        "trust_remote_code",
        "dataset_num_proc",
        "torch_compile",
        "torch_compile_backend",
        "torch_compile_mode",
    }
)

# Changing these would load the checkpoint into another model, adapter or optimizer: never allowed on resume.
STRUCTURAL = frozenset(
    {
        "model_name_or_path",
        "model_revision",
        "gguf_file",
        "adapter",
        "adapter_target_modules",
        "givens_quasi",
        "givens_scaling",
        "sorsa_r",
        "hra_r",
        "hra_apply_gs",
        "oft_block_size",
        "oft_use_cayley_neumann",
        "boft_block_size",
        "boft_n_butterfly_factor",
        "road_variant",
        "road_group_size",
        "lora_r",
        "lora_target_modules",
        "lora_target_parameters",
        "lora_modules_to_save",
        "use_rslora",
        "use_dora",
        "use_peft",
        "load_in_4bit",
        "load_in_8bit",
        "bnb_4bit_quant_type",
        "use_bnb_nested_quant",
        "optim",
        "deepspeed",
        "fsdp",
    }
)


def plain_value(value):
    """A JSON value for a recipe value (enums by value, other objects by their text)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def shaping_values(parsed) -> dict:
    """Every recipe value of the parsed dataclasses that shapes training, by key."""
    values = {}
    for arguments in parsed:
        for spec_field in dataclasses.fields(arguments):
            if spec_field.init and spec_field.name not in NOT_SHAPING:
                values[spec_field.name] = plain_value(getattr(arguments, spec_field.name))
    return values


def build_spec(parsed, dataset) -> dict:
    """The spec of a run about to train: its shaping values, its data's fingerprints, its process count."""
    fingerprints = {name: rows_fingerprint(split) for name, split in dataset.items()}
    return {
        "recipe": shaping_values(parsed),
        "data": fingerprints,
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
        "changes": [],
    }


def differences(recorded: dict, current: dict) -> list[tuple[str, object, object]]:
    """(key, recorded value, current value) for every shaping value, data split and process count that differ;
    keys that only one side knows (another goft version) are not compared."""
    found = []
    old, new = recorded.get("recipe", {}), current.get("recipe", {})
    for key in sorted(set(old) & set(new)):
        if old[key] != new[key]:
            found.append((key, old[key], new[key]))
    for split in sorted(set(recorded.get("data", {})) & set(current.get("data", {}))):
        if recorded["data"][split] != current["data"][split]:
            found.append(
                (
                    f"data ({split} split)",
                    f"sha256 {recorded['data'][split][:12]}…",
                    f"sha256 {current['data'][split][:12]}…",
                )
            )
    if "processes" in recorded and recorded["processes"] != current.get("processes"):
        found.append(("processes", recorded["processes"], current.get("processes")))
    return found


def _listed(found) -> str:
    return "; ".join(f"{key}: {old!r} in the checkpoint, {new!r} now" for key, old, new in found)


def checked_resume_spec(current: dict, recorded: dict | None, checkpoint: str, step: int, allow_changes: bool) -> dict:
    """The spec the resumed run goes on with: `current`, with the checkpoint's record of earlier changes and, when
    `allow_changes`, the new ones (taking effect at `step`). Differences without `allow_changes`, and any change of a
    structural key, are refused with the differences listed."""
    if recorded is None:
        logger.warning(
            "%s records no run spec (written by an older goft or another tool): resuming without "
            "checking that the recipe and data are the ones it was trained with.",
            checkpoint,
        )
        return current
    found = differences(recorded, current)
    structural = [entry for entry in found if entry[0] in STRUCTURAL]
    if structural:
        raise RecipeError(
            f"Cannot resume from {checkpoint}: {_listed(structural)}. These define the model, the "
            "adapter or the optimizer the checkpoint holds. Rerun with the checkpoint's values, or pass "
            "`--overwrite_output_dir true` to start afresh."
        )
    if found and not allow_changes:
        raise RecipeError(
            f"The run in {os.path.dirname(checkpoint) or '.'} was trained with other settings than "
            f"this rerun's: {_listed(found)}. Rerun with the checkpoint's values to resume it, pass "
            f"`--resume_with_changes true` to apply the new ones from step {step}, or "
            "`--overwrite_output_dir true` to start afresh."
        )
    changes = list(recorded.get("changes", []))
    changes += [{"step": step, "key": key, "before": old, "after": new} for key, old, new in found]
    for key, old, new in found:
        logger.warning("resume_with_changes: %s changes from %r to %r at step %d.", key, old, new, step)
    return {**current, "changes": changes}


class ResumeChangesMixin:
    """Mix in before a `transformers.Trainer`: after the optimizer and scheduler state of a checkpoint is loaded,
    recipe values changed at this resume (`resume_changes`: keys changed at the resumed step) replace the ones
    that state brought back, so that what the card records is what trains."""

    resume_changes: tuple = ()

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint and self.resume_changes:
            decay = set(self.get_decay_parameter_names(self.model))
            decayed = {id(p) for name, p in self.model.named_parameters() if name in decay}
            apply_changed_optimizer_settings(
                self.optimizer,
                self.lr_scheduler,
                self.args,
                set(self.resume_changes),
                lambda group: any(id(p) in decayed for p in group["params"]),
            )


def apply_changed_optimizer_settings(optimizer, scheduler, args, changed: set, is_decayed=lambda group: True) -> None:
    """Put `args`' learning rate, weight decay (into the groups `is_decayed` names), betas and epsilon into a
    restored optimizer and scheduler, for the keys in `changed`."""
    groups = getattr(optimizer, "param_groups", [])
    if "learning_rate" in changed and scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [args.learning_rate for _ in scheduler.base_lrs]
        lambdas = getattr(scheduler, "lr_lambdas", None)
        for index, group in enumerate(groups):
            group["initial_lr"] = args.learning_rate
            group["lr"] = args.learning_rate * (lambdas[index](scheduler.last_epoch) if lambdas else 1.0)
        scheduler._last_lr = [group["lr"] for group in groups]
    for group in groups:
        if "weight_decay" in changed and "weight_decay" in group and is_decayed(group):
            group["weight_decay"] = args.weight_decay
        if "adam_epsilon" in changed and "eps" in group:
            group["eps"] = args.adam_epsilon
        if changed & {"adam_beta1", "adam_beta2"} and "betas" in group:
            group["betas"] = (args.adam_beta1, args.adam_beta2)
