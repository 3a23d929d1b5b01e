"""What every recipe stage does around its TRL trainer once it is prepared (`goft.training.prepare`): load, train,
measure, save, describe, publish."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from datasets import DatasetDict
from peft import PeftConfig, PeftModel
from transformers import PreTrainedTokenizerBase, TrainingArguments
from transformers.trainer_utils import set_seed

from goft.data.arguments import DataArguments
from goft.data.loading import mixture_record, recipe_mixture, source_record
from goft.data.stages import RecipeStage
from goft.errors import RecipeError
from goft.io import outputs
from goft.io.model_source import ModelSource, load_causal_lm, quantization_config
from goft.methods import describe_method, is_exactly_orthogonal
from goft.regularizers import Regularizer
from goft.training import adapters
from goft.training.arguments.fields import ModelArguments, RetentionArguments
from goft.training.parallel import fsdp, processes
from goft.training.publish import hub, model_card, summary
from goft.training.publish.logging_targets import log_destinations, set_log_defaults
from goft.training.runs import checkpoints, run_spec
from goft.training.runs.safeguards import checked_orthogonality_error
from goft.training.trainers import anchor, forgetting, replay

logger = logging.getLogger(__name__)

REFERENCE_ADAPTER = "ref"


@dataclass
class RecipeRun:
    """One stage's run, checked before any model is loaded (see `goft.training.prepare.prepare_run`).

    `training_args` is TRL's `SFTConfig` or `DPOConfig`. What the run measures on its way fills `task_metrics`,
    `retention_check`, `retention_record` and `measures` (the forgetting callbacks)."""

    stage: RecipeStage
    data_args: DataArguments
    training_args: TrainingArguments
    model_args: ModelArguments
    retention_args: RetentionArguments
    recipe_yaml: str
    source: ModelSource
    adapter_config: PeftConfig
    dataset: DatasetDict
    resume_from: str | None
    push_to_hub: bool
    push_every_save: bool = False  # `hub_strategy: every_save`: each saved adapter is pushed too
    tokenizer: PreTrainedTokenizerBase | None = None
    hub_token: str | None = field(default=None, repr=False)
    strictness_waived: bool = False
    regularizers: tuple[Regularizer, ...] = ()  # the adapter method's (`regularizers_for`)
    task_metrics: dict = field(default_factory=dict)
    retention_check: forgetting.RetentionCheck | None = None
    retention_record: dict | None = None
    measures: list[forgetting.ForgettingBudget | forgetting.TaskTarget] = field(default_factory=list)
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
        """Load model and tokenizer and build `trainer_class` (`GoftSFTTrainer`, `GoftDPOTrainer`, or another
        subclass of `GoftTrainerMixin`) for this run; the method's regulariser
        (qGOFT, SORSA, HRA) joins the training, the safeguards guard it (complete checkpoints, a stop on a non-finite
        loss, orthogonality before each checkpoint), and a continued adapter becomes its own frozen reference."""
        set_log_defaults(self.training_args)  # TensorBoard writes to <output_dir>/runs unless told otherwise
        model, tokenizer, peft_config = self.load_model_and_tokenizer()
        self.measures = forgetting.make_callbacks(
            self.retention_args, tokenizer, self.train_dataset, self.training_args.max_length
        )
        anchor_terms = self.add_replay_and_anchor(model, tokenizer)  # after the task target took its (task) rows
        trainer = trainer_class(
            model=model,
            args=self.training_args,
            train_dataset=self.train_dataset,
            eval_dataset=self.eval_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=self.callbacks(),
            regularizers=self.regularizers + anchor_terms,
            strict_orthogonal=is_exactly_orthogonal(self.adapter_config),
            run_spec=self.spec,
            resume_changes=self.changes_at_resume(),
            **self.stage_options(),
        )
        if self.stage.alignment:
            self.use_adapter_as_reference(trainer)
        trainer.whole_adapter_parameters = fsdp.keep_adapters_whole_under_fsdp1(trainer)
        return trainer

    def callbacks(self) -> list | None:
        """The forgetting measures, and the pushes of `hub_strategy: every_save`."""
        pushes = []
        if self.push_every_save:
            pushes.append(hub.AdapterPushes(self.training_args, self.hub_token, self.stage.name))
        return [*self.measures, *pushes] or None

    def stage_options(self) -> dict:
        """The trainer's keyword arguments that only one stage has: DPO's `max_prompt_length`."""
        limit = self.data_args.max_prompt_length
        return {"max_prompt_length": limit} if limit is not None else {}

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
            "dataset_text_field": getattr(self.training_args, "dataset_text_field", None) or "text",
            "split_sha256": self.spec.get("data"),
            **source_record(args),
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
        metrics.update(summary.final_training_metrics(trainer))
        for measure in self.measures:
            metrics.update(measure.metrics())
        if is_exactly_orthogonal(self.adapter_config):
            error = checked_orthogonality_error(model, "it was not saved")
            metrics["orthogonality_error"] = error
            logger.info("orthogonality error of the adapter: %.3g", error)
        trainer.save_model(args.output_dir)
        if trainer.accelerator.is_main_process:
            facts = model_card.CardFacts(
                stage=self.stage.name,
                source=self.source,
                method=describe_method(self.adapter_config),
                strict=is_exactly_orthogonal(self.adapter_config),
                recipe_yaml=self.recipe_yaml,
                dataset_name=self.data_args.dataset_name or _mixer_text(self.data_args.dataset_mixer),
                dataset_mixture=recipe_mixture(self.data_args, self.training_args.seed),
                repo_or_dir=args.hub_model_id if self.push_to_hub else os.path.abspath(args.output_dir),
                init_adapter=self.source.adapter_path,
                strictness_waived=self.strictness_waived,
                resume_changes=tuple(self.spec.get("changes", [])),
                hyperparameters=model_card.training_hyperparameters(args, trainer.accelerator.num_processes),
            )
            card = model_card.build_model_card(facts, metrics)
            card.save(os.path.join(args.output_dir, "README.md"))
            outputs.mark_finished(
                args.output_dir,
                {
                    "stage": self.stage.name,
                    "metrics": metrics,
                    "world_size": trainer.accelerator.num_processes,
                    "parallelism": processes.parallelism(trainer.accelerator),
                    "data": self.data_record(),
                    "retention": self.retention_record,
                    "logs": log_destinations(args),
                    "recipe": self.recipe_yaml,
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


def _mixer_text(mixer: dict | None) -> str | None:
    """alignment-handbook's `dataset_mixer`, for the model card's dataset line."""
    return "dataset_mixer " + ", ".join(f"{name} ({fraction:g})" for name, fraction in mixer.items()) if mixer else None
