"""What every recipe stage does around its TRL trainer: check, load, train, save, describe, publish."""

import logging
import os
import sys
from dataclasses import dataclass, field

from accelerate.utils import DistributedType
from peft import PeftConfig, PeftModel
from transformers.trainer_utils import set_seed

from goft.data.chat_templates import use_training_chat_template
from goft.data.loading import load_recipe_dataset, mixture_locations, mixture_record, recipe_mixture
from goft.data.stages import Stage
from goft.errors import RecipeError
from goft.io import adapter_checks, outputs
from goft.io.model_source import (
    ModelSource,
    check_model_available,
    load_causal_lm,
    load_tokenizer,
    quantization_config,
    resolve_model_source,
)
from goft.methods import describe_method, is_exactly_orthogonal
from goft.regularizers import Regularizer, regularizers_for
from goft.training import adapters
from goft.training.arguments import preflight
from goft.training.arguments.checks import check_training_arguments
from goft.training.arguments.recipe_file import recipe_config_path
from goft.training.parallel import fsdp, processes
from goft.training.publish import hub, model_card
from goft.training.publish.logging_targets import log_destinations, set_log_defaults
from goft.training.runs import checkpoints, run_spec
from goft.training.runs.safeguards import checked_orthogonality_error, recipe_trainer_class
from goft.training.trainers import anchor, forgetting, replay
from goft.tuners.sorsa import SorsaConfig

logger = logging.getLogger(__name__)

REFERENCE_ADAPTER = "ref"


@dataclass
class RecipeRun:
    """One stage's run, checked before any model is loaded (see `prepare_run`)."""

    stage: Stage
    data_args: object
    training_args: object
    model_args: object
    retention_args: object
    recipe_yaml: str
    source: ModelSource
    adapter_config: PeftConfig
    dataset: object
    resume_from: str | None
    push_to_hub: bool
    tokenizer: object = None
    hub_token: str | None = field(default=None, repr=False)
    strictness_waived: bool = False
    regularizers: tuple = ()  # the adapter method's (`regularizers_for`)
    task_metrics: dict = field(default_factory=dict)
    retention_check: object = None
    retention_record: dict | None = None
    measures: list = field(default_factory=list)
    spec: dict = field(default_factory=dict)

    @property
    def train_dataset(self):
        return self.dataset[self.data_args.dataset_train_split]

    @property
    def test_dataset(self):
        return self.dataset[self.data_args.dataset_test_split]

    @property
    def eval_dataset(self):
        return self.test_dataset if self.training_args.eval_strategy != "no" else None

    def task_eval_dataset(self, trainer):
        """The held-out examples for before/after task metrics, or None when they are off or cannot run."""
        n = min(self.data_args.task_eval_samples, len(self.test_dataset))
        if n <= 0:
            return None
        if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
            # DeepSpeed builds its engine when training starts: evaluating first would leave it unbuilt; and sharded
            # generation (ZeRO-3, FSDP) needs every rank. Evaluate the saved adapter after the run instead.
            logger.warning(
                "task_eval_samples is ignored under DeepSpeed and FSDP; evaluate the saved adapter "
                "afterwards (recipes/evaluate.py)."
            )
            return None
        return self.test_dataset.select(range(n))

    def load_model_and_tokenizer(self):
        """(model, tokenizer, peft_config): a fresh adapter is left for the trainer to add (peft_config set);
        an adapter folder is loaded trainable (peft_config None)."""
        trust = getattr(self.training_args, "trust_remote_code", False)
        tokenizer = self.tokenizer
        set_seed(self.training_args.seed)  # fresh adapters and splits are reproducible
        model = load_causal_lm(
            self.source,
            dtype=self.model_args.dtype,
            revision=self.model_args.model_revision,
            attn_implementation=self.model_args.attn_implementation,
            quantization_config=quantization_config(self.model_args),
            trust_remote_code=trust,
        )
        if self.source.adapter_path:
            model = PeftModel.from_pretrained(model, self.source.adapter_path, is_trainable=True)
            return model, tokenizer, None
        return model, tokenizer, self.adapter_config

    def make_trainer(self, trainer_class):
        """Load model and tokenizer and build `trainer_class` (a TRL trainer) for this run; the method's regulariser
        (qGOFT, SORSA, HRA) joins the training, the safeguards guard it (complete checkpoints, a stop on a non-finite
        loss, orthogonality before each checkpoint), and a continued adapter becomes its own frozen reference."""
        set_log_defaults(self.training_args)  # TensorBoard writes to <output_dir>/runs unless told otherwise
        model, tokenizer, peft_config = self.load_model_and_tokenizer()
        self.measures = forgetting.make_callbacks(
            self.retention_args, tokenizer, self.train_dataset, self.training_args.max_length
        )
        anchor_terms = self.add_replay_and_anchor(model, tokenizer)  # after the task target took its (task) rows
        trainer_class = recipe_trainer_class(
            trainer_class,
            self.adapter_config,
            self.regularizers + anchor_terms,
            run_spec=self.spec,
            resume_changes=self.changes_at_resume(),
        )
        trainer = trainer_class(
            model=model,
            args=self.training_args,
            train_dataset=self.train_dataset,
            eval_dataset=self.eval_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=self.measures or None,
        )
        if self.stage.alignment:
            self.use_adapter_as_reference(trainer)
        trainer.whole_adapter_parameters = fsdp.keep_adapters_whole_under_fsdp1(trainer)
        return trainer

    def add_replay_and_anchor(self, model, tokenizer) -> tuple:
        """With `replay_share`, mix the base's own answers to the replay prompts into the training split (see
        `replay`); with `anchor_weight`, the anchor regulariser on those answers (see `anchor`)."""
        args = self.retention_args
        if not (args.replay_share or args.anchor_weight):
            return ()
        if getattr(model, "hf_quantizer", None) is None:  # answer on the training device (where the trainer puts it)
            model.to(self.training_args.device)
        answers = replay.replay_answers(
            args,
            model,
            tokenizer,
            self.training_args.output_dir,
            self.source.name,
            self.training_args.main_process_first,
            earlier_run=self.source.adapter_path,
        )
        if args.replay_share:
            mixed, record = replay.mix_replay(self.train_dataset, answers, args.replay_share)
            self.dataset[self.data_args.dataset_train_split] = mixed
            self.task_metrics.update(record)
        if not args.anchor_weight:
            return ()
        sequences = anchor.anchor_sequences(answers, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.task_metrics.update({"anchor/weight": args.anchor_weight, "anchor/conversations": len(sequences)})
        return (Regularizer("anchor_kl", anchor.AnchorKL(sequences, args.anchor_batch_size, pad), args.anchor_weight),)

    def changes_at_resume(self) -> tuple:
        """The recipe keys changed at the resumed step (`resume_with_changes`); () when none or not resuming."""
        if not self.resume_from:
            return ()
        step = checkpoints.step_of(self.resume_from)
        return tuple(change["key"] for change in self.spec.get("changes", []) if change["step"] == step)

    def use_adapter_as_reference(self, trainer) -> None:
        """When training continues an adapter, the reference is that adapter as loaded, frozen (not the base)."""
        if not self.source.adapter_path:
            return
        model = trainer.accelerator.unwrap_model(trainer.model)
        if REFERENCE_ADAPTER not in model.peft_config:
            raise RecipeError("The trainer did not create a reference adapter for the loaded adapter.")
        adapters.copy_adapter_weights(model, adapters.POLICY_ADAPTER, REFERENCE_ADAPTER)

    def data_record(self) -> dict:
        """How the run's data and held-out split were made, so that evaluation can rebuild the same split."""
        args = self.data_args
        name = args.dataset_name
        local = os.path.expanduser(name) if name else None
        record = {
            "dataset_name": os.path.abspath(local) if local and os.path.exists(local) else name,
            "dataset_config": args.dataset_config,
            "dataset_train_split": args.dataset_train_split,
            "dataset_test_split": args.dataset_test_split,
            "dataset_test_size": args.dataset_test_size,
            "seed": self.training_args.seed,
            "columns": list(self.train_dataset.column_names),
            "split_sha256": self.spec.get("data"),
        }
        mixture = recipe_mixture(args, self.training_args.seed)
        if mixture is not None:  # `dataset_mixture`, or TRL's `datasets` and `test_split_size`
            record.update(mixture_record(mixture))
        return record

    def record_task_metrics(self, when: str, metrics: dict) -> None:
        self.task_metrics.update({f"task/{when}/{key}": value for key, value in metrics.items()})
        logger.info("task metrics %s training: %s", when, metrics)

    def record_retention(self, trainer, when: str) -> None:
        """With `retention_eval`, the retention share of the model as it is now (`when`: before or after training),
        on the main process; skipped under DeepSpeed, whose engine is built only when training starts."""
        if not self.retention_args.retention_eval or not trainer.accelerator.is_main_process:
            return
        if trainer.is_deepspeed_enabled:
            if when == "before":
                logger.warning("retention_eval is ignored under DeepSpeed; run recipes/evaluate.py on the result.")
            return
        if self.retention_check is None:
            self.retention_check = forgetting.RetentionCheck(
                self.retention_args.retention_questions, prior=self.previous_run_record().get("retention")
            )
        result = self.retention_check.measure(trainer, when)
        self.task_metrics[f"retention/{when}"] = result["retention"]
        self.task_metrics["retention/known_to_base"] = result["known_to_base"]
        if when == "after":
            self.task_metrics["retention/lost"] = len(result["lost"])
            self.retention_record = self.retention_check.record(result["retention"], result["lost"])
        logger.info(
            "retention %s training: %.3f of %d questions the base answers",
            when,
            result["retention"],
            result["known_to_base"],
        )

    def previous_run_record(self) -> dict:
        """goft_run.json of the run whose adapter this run continues ({} when there is none)."""
        if not self.source.adapter_path:
            return {}
        return outputs.read_run_record(self.source.adapter_path) or {}

    def finish(self, trainer) -> dict:
        """Check orthogonality, save adapter + tokenizer + card, mark the run finished, push; returns the metrics."""
        args = self.training_args
        model = trainer.accelerator.unwrap_model(trainer.model)
        if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
            model.delete_adapter(REFERENCE_ADAPTER)  # the frozen reference is not part of the result
        metrics = dict(self.task_metrics)
        metrics.update(_final_training_metrics(trainer))
        for measure in self.measures:
            metrics.update(measure.metrics())
        if is_exactly_orthogonal(self.adapter_config):
            error = checked_orthogonality_error(model, "it was not saved")
            metrics["orthogonality_error"] = error
            logger.info("orthogonality error of the adapter: %.3g", error)
        trainer.save_model(args.output_dir)
        if trainer.accelerator.is_main_process:
            card = model_card.build_model_card(
                stage=self.stage.name,
                source=self.source,
                method=describe_method(self.adapter_config),
                strict=is_exactly_orthogonal(self.adapter_config),
                recipe_yaml=self.recipe_yaml,
                metrics=metrics,
                dataset_name=self.data_args.dataset_name,
                dataset_mixture=recipe_mixture(self.data_args, self.training_args.seed),
                repo_or_dir=args.hub_model_id if self.push_to_hub else os.path.abspath(args.output_dir),
                init_adapter=self.source.adapter_path,
                strictness_waived=self.strictness_waived,
                resume_changes=self.spec.get("changes", []),
                hyperparameters=model_card.training_hyperparameters(args, trainer.accelerator.num_processes),
            )
            card.save(os.path.join(args.output_dir, "README.md"))
            outputs.mark_finished(
                args.output_dir,
                {
                    "stage": self.stage.name,
                    "metrics": metrics,
                    "world_size": trainer.accelerator.num_processes,
                    "parallelism": parallelism(trainer.accelerator),
                    "data": self.data_record(),
                    "retention": self.retention_record,
                    "logs": log_destinations(args),
                    run_spec.SPEC_KEY: self.spec,
                },
            )
            outputs.drop_set_aside_runs(args.output_dir)
            if self.push_to_hub:
                url = hub.push_run(
                    args.output_dir, args, self.hub_token, commit_message=f"goft {self.stage.name}: adapter and card"
                )
                metrics["hub_url"] = url
        trainer.accelerator.wait_for_everyone()
        return metrics


def parallelism(accelerator) -> str:
    """How the run was spread over its processes: 'FSDP1', 'FSDP2', 'DeepSpeed ZeRO-N', 'DDP' or 'one process'."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return f"FSDP{accelerator.state.fsdp_plugin.fsdp_version}"
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return f"DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
    return "DDP" if accelerator.num_processes > 1 else "one process"


def _final_training_metrics(trainer) -> dict:
    wanted = ("train_loss", "train_runtime", "eval_loss", "eval_rewards/margins", "eval_rewards/accuracies")
    found = {}
    for entry in trainer.state.log_history:
        found.update({k: v for k, v in entry.items() if k in wanted})
    found["global_step"] = trainer.state.global_step
    return found


def prepare_tokenizer(source: ModelSource, training_args, model_args):
    """The run's tokenizer, with goft's marked-up chat template when assistant-only loss needs one."""
    trust = getattr(training_args, "trust_remote_code", False)
    try:
        tokenizer = load_tokenizer(source, model_args.model_revision, trust)
    except (OSError, ValueError) as error:
        raise RecipeError(f"Cannot load the tokenizer of {source.name!r}: {error}") from None
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


def _read_locations(data_args, training_args, retention_args, source: ModelSource) -> dict:
    """Every local location the run reads, by what it is (the output must overlap none of them)."""
    return {
        "model folder": source.path,
        "adapter folder it continues": source.adapter_path,
        "dataset": data_args.dataset_name,
        **mixture_locations(data_args.dataset_mixture, data_args.datasets),
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
    stage: Stage, data_args, training_args, model_args, adapter_args, retention_args, recipe_yaml: str
) -> RecipeRun:
    """Every check that needs no weights, cheap and first: config, strictness, Hub settings and token, output_dir,
    data, the resumed checkpoint's spec, precision, the adapter against the model's structure, the chat template.
    Nothing is written before they all pass; then the output folder is locked for this run and set up (earlier
    incomplete checkpoints and, with `overwrite_output_dir`, the previous run moved aside)."""
    check_training_arguments(data_args, training_args, model_args, adapter_args, retention_args)
    source = resolve_model_source(model_args.model_name_or_path, model_args.gguf_file, check_available=False)
    adapter_config = source.adapter_config or adapters.build_adapter_config(adapter_args, model_args)
    waived = False
    if stage.alignment:
        adapters.require_orthogonal_adapter(adapter_config, stage.title, adapter_args.allow_non_orthogonal_alignment)
        waived = not is_exactly_orthogonal(adapter_config)
    hub_token = hub.take_hub_token(training_args)
    hub.check_push_settings(training_args, hub_token)
    resume_from = checkpoints.resume_checkpoint(
        training_args.output_dir, training_args.resume_from_checkpoint, data_args.overwrite_output_dir
    )
    dataset = load_recipe_dataset(data_args, stage.columns, seed=training_args.seed)
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
    tokenizer = prepare_tokenizer(source, training_args, model_args)
    template_path = getattr(training_args, "chat_template_path", None)
    if not template_path or preflight.chat_template_file_text(template_path) is not None:  # else a tokenizer's
        preflight.check_chat_template(
            tokenizer,
            source.name,
            preflight.is_conversational(dataset[data_args.dataset_train_split], stage.columns),
            getattr(training_args, "assistant_only_loss", False),
            template_path,
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


def print_summary(trainer, run: RecipeRun, metrics: dict) -> None:
    """What the user wants to see last: the task metric before and after, and where things were written."""
    if not trainer.accelerator.is_main_process:
        return
    lines = [f"== goft {run.stage.name} finished after {metrics.get('global_step')} steps =="]
    for key, value in metrics.items():
        if (
            key.startswith(("task/", "retention/", "replay/", "anchor/", "forgetting/", "task_target/"))
            or key == "orthogonality_error"
        ):
            lines.append(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    if "forgetting/stopped_at_step" in metrics:
        lines.append(
            f"  forgetting budget: KL {metrics['forgetting/stopped_kl']:.4g} > "
            f"{metrics['forgetting/budget_kl']:g} at step {metrics['forgetting/stopped_at_step']}; training "
            f"stopped and the saved adapter is the one of step {metrics['forgetting/kept_step']} "
            f"(KL {metrics['forgetting/kept_kl']:.4g})"
        )
    output = os.path.abspath(run.training_args.output_dir)
    lines.append(f"  adapter: {output}/adapter_model.safetensors")
    lines.append(f"  model card: {output}/README.md")
    for name, destination in log_destinations(run.training_args).items():
        lines.append(f"  logs ({name}): {destination}")
    if "hub_url" in metrics:
        lines.append(f"  pushed to: {metrics['hub_url']}")
    print("\n".join(lines), flush=True)
