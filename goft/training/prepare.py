"""Preparing a recipe stage's run: every check that needs no weights, cheap and first, then the output folder claimed
(`prepare_run` returns the `RecipeRun` that trains)."""

import logging
import sys

import yaml
from peft import PeftConfig

from goft.data.chat_templates import use_training_chat_template
from goft.data.loading import load_recipe_dataset, mixture_locations
from goft.data.stages import RecipeStage
from goft.errors import RecipeError
from goft.io import adapter_checks, outputs
from goft.io.model_source import (
    ModelSource,
    check_model_available,
    load_tokenizer,
    quantization_config,
    resolve_model_source,
)
from goft.methods import is_exactly_orthogonal
from goft.regularizers import regularizers_for
from goft.training import adapters
from goft.training.arguments import idle_keys, preflight
from goft.training.arguments.checks import check_training_arguments, recipe_values
from goft.training.arguments.recipe_file import recipe_config_path
from goft.training.parallel import processes
from goft.training.publish import hub
from goft.training.recipe import RecipeRun
from goft.training.runs import checkpoints, run_spec
from goft.training.trainers import forgetting
from goft.tuners.sorsa import SorsaConfig

logger = logging.getLogger(__name__)


def prepare_tokenizer(source: ModelSource, training_args, model_args, inline_template: str | None = None):
    """The run's tokenizer, with the recipe's inline chat template (alignment-handbook's `chat_template`) if it
    gives one, and goft's marked-up twin of the template when assistant-only loss needs one."""
    trust = getattr(training_args, "trust_remote_code", False)
    try:
        tokenizer = load_tokenizer(source, model_args.model_revision, trust)
    except (OSError, ValueError) as error:
        raise RecipeError(f"Cannot load the tokenizer of {source.name!r}: {error}") from None
    if inline_template:
        tokenizer.chat_template = inline_template
    if getattr(training_args, "assistant_only_loss", False):
        use_training_chat_template(tokenizer)
    return tokenizer


def check_model(source: ModelSource, adapter_config: PeftConfig, method: str, model_args, training_args) -> None:
    """The adapter against the model's structure (a weightless skeleton): targets exist, layers fit, a saved
    adapter has this base's shapes; SORSA is refused on a quantized base."""
    trust = getattr(training_args, "trust_remote_code", False)
    if isinstance(adapter_config, SorsaConfig) and (model_args.load_in_4bit or model_args.load_in_8bit):
        raise RecipeError(
            "SORSA needs full-precision weights to factorise (SVD); it cannot train a 4-/8-bit base. "
            "Drop `load_in_4bit`/`load_in_8bit`, or choose another adapter (GOFT supports them)."
        )
    if source.adapter_path:
        adapter_checks.check_adapters_fit(source, [source], model_args.model_revision, trust)
        return
    skeleton = adapter_checks.build_skeleton(
        adapter_checks.load_model_config(source, model_args.model_revision, trust), source, trust
    )
    adapter_checks.check_fresh_adapter(skeleton, adapter_config, source.name, method)


def recipe_keys(recipe_yaml: str) -> list[str]:
    """The keys the recipe set (file or flag), as the effective recipe lists them."""
    recipe = yaml.safe_load(recipe_yaml) or {}
    return list(recipe) if isinstance(recipe, dict) else []


def _read_locations(data_args, training_args, retention_args, source: ModelSource) -> dict:
    """Every local location the run reads, by what it is (the output must overlap none of them)."""
    return {
        "model folder": source.path,
        "adapter folder it continues": source.adapter_path,
        "dataset": data_args.dataset_name,
        **mixture_locations(data_args.dataset_mixture, data_args.datasets, data_args.dataset_mixer),
        "recipe file": recipe_config_path(sys.argv[1:]),
        "chat template": getattr(training_args, "chat_template_path", None),
        "retention questions": retention_args.retention_questions,
        "general text": retention_args.general_text,
        "replay prompts": retention_args.replay_prompts,
        "DeepSpeed config": training_args.deepspeed if isinstance(training_args.deepspeed, str) else None,
    }


def _resume_spec(spec: dict, resume_from: str | None, allow_changes: bool) -> dict:
    """The run's spec, checked against the one the checkpoint it resumes from recorded (see `run_spec`)."""
    if not resume_from:
        return spec
    recorded = checkpoints.recorded_summary(resume_from).get(run_spec.SPEC_KEY)
    return run_spec.checked_resume_spec(spec, recorded, resume_from, checkpoints.step_of(resume_from), allow_changes)


def prepare_run(
    stage: RecipeStage, data_args, training_args, model_args, adapter_args, retention_args, recipe_yaml: str
) -> RecipeRun:
    """Every check that needs no weights, cheap and first: config, strictness, Hub settings and token, output_dir,
    data, the resumed checkpoint's spec, precision, the adapter against the model's structure, the chat template.
    Nothing is written before they all pass; then the output folder is locked for this run and set up (earlier
    incomplete checkpoints and, with `overwrite_output_dir`, the previous run moved aside)."""
    preflight.check_inline_chat_template(data_args.chat_template, getattr(training_args, "chat_template_path", None))
    check_training_arguments(data_args, training_args, model_args, adapter_args, retention_args)
    keys = recipe_keys(recipe_yaml)
    idle_keys.refuse_idle_keys(
        keys, recipe_values(training_args, data_args, model_args, adapter_args, retention_args), stage.name
    )
    source = resolve_model_source(model_args.model_name_or_path, model_args.gguf_file, check_available=False)
    if source.adapter_path:
        idle_keys.refuse_new_adapter_keys(keys, source.adapter_path)
    idle_keys.refuse_local_revision(model_args.model_revision, source.path)
    adapter_config = source.adapter_config or adapters.build_adapter_config(adapter_args, model_args)
    waived = False
    if stage.alignment:
        adapters.require_orthogonal_adapter(adapter_config, stage.title, adapter_args.allow_non_orthogonal_alignment)
        waived = not is_exactly_orthogonal(adapter_config)
    hub_token = hub.take_hub_token(training_args)
    hub.check_push_settings(training_args, hub_token)
    push_strategy = hub.hub_strategy(training_args, "hub_strategy" in keys)
    resume_from = checkpoints.resume_checkpoint(
        training_args.output_dir, training_args.resume_from_checkpoint, data_args.overwrite_output_dir
    )
    text_field = getattr(training_args, "dataset_text_field", None) or "text"
    dataset = load_recipe_dataset(data_args, stage, seed=training_args.seed, text_field=text_field)
    train_rows = dataset[data_args.dataset_train_split]
    forgetting.check_data_type(
        retention_args, train_rows, text_field, getattr(training_args, "assistant_only_loss", False)
    )
    spec = _resume_spec(
        run_spec.build_spec((data_args, training_args, model_args, adapter_args, retention_args), dataset),
        resume_from,
        data_args.resume_with_changes,
    )
    forgetting.check_retention_arguments(retention_args, training_args, stage.name)
    quantization_config(model_args)  # refuses 4-/8-bit without a working bitsandbytes, before anything loads
    preflight.check_precision(training_args, model_args)
    preflight.check_rotation_backend()
    check_model_available(source)
    outputs.check_output_location(
        training_args.output_dir, _read_locations(data_args, training_args, retention_args, source)
    )
    if not source.adapter_path:
        adapter_config.base_model_name_or_path = source.name
    check_model(source, adapter_config, adapter_args.adapter, model_args, training_args)
    tokenizer = prepare_tokenizer(source, training_args, model_args, data_args.chat_template)
    template_path = getattr(training_args, "chat_template_path", None)
    if not template_path or preflight.chat_template_file_text(template_path) is not None:  # else a tokenizer's
        preflight.check_chat_template(
            tokenizer,
            source.name,
            preflight.is_conversational(train_rows, tuple(train_rows.column_names)),
            getattr(training_args, "assistant_only_loss", False),
            template_path,
            inline=bool(data_args.chat_template),
        )
    _claim_output_dir(training_args.output_dir, resume_from, data_args.overwrite_output_dir)
    if resume_from:
        logger.warning("Resuming from %s", resume_from)
    push = training_args.push_to_hub
    training_args.push_to_hub = False  # the recipe pushes the finished adapter and card itself, once
    return RecipeRun(
        stage=stage,
        data_args=data_args,
        training_args=training_args,
        model_args=model_args,
        retention_args=retention_args,
        recipe_yaml=recipe_yaml,
        source=source,
        adapter_config=adapter_config,
        dataset=dataset,
        resume_from=resume_from,
        push_to_hub=push,
        push_every_save=push and push_strategy == hub.EVERY_SAVE,
        tokenizer=tokenizer,
        hub_token=hub_token,
        strictness_waived=waived,
        spec=spec,
        regularizers=regularizers_for(adapter_config, adapter_args.hra_lambda),
    )


def _claim_output_dir(output_dir: str, resume_from: str | None, overwrite: bool) -> None:
    """On the main process, once every check has passed: lock `output_dir` for this run, move the previous run
    aside (`overwrite`), and set aside incomplete checkpoints newer than the one resumed from."""
    if not processes.is_main_process():
        return
    outputs.hold_output_lock(output_dir)
    if overwrite:
        outputs.set_aside_previous_run(output_dir)
    checkpoints.set_aside_incomplete(output_dir, resume_from)
