"""Forgetting measured around and during a recipe run.

- `RetentionCheck`: the retention questions before and after training: the share of the questions the base answers
  correctly that the model (its adapter on) still answers correctly.
- `ForgettingBudget`: a callback that measures KL(base ‖ tuned) per token on a few general-text paragraphs every
  `measure_steps` optimizer steps. When a measurement exceeds the budget, training stops and the adapter goes back
  to its weights at the last measurement within the budget; that adapter is the run's result.
- `TaskTarget`: a callback that measures the answers' NLL per token on a fixed sample of training conversations
  every `measure_steps` and stops training once it reaches the target, so that the run does not go on learning (and
  forgetting) past what was asked. The held-out split is never looked at, so it stays an unbiased test.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path

import torch
from transformers import TrainerCallback

from goft.data.dataset_types import is_conversation, row_form, row_type
from goft.data.stages import LANGUAGE_MODELING, SFT
from goft.errors import RecipeError
from goft.evaluation import assets
from goft.evaluation.knowledge import Question, full_retention, knowledge_retention, known_questions, load_questions
from goft.evaluation.shift import BaseLogitsCache, general_text_shift, load_general_text
from goft.evaluation.tasks import answer_nll
from goft.evaluation.weights import adapter_is_identity
from goft.training.trainers.replay import check_replay_arguments

logger = logging.getLogger(__name__)

BUDGET_MAX_LENGTH = 128  # tokens per general-text paragraph in the budget's measurement


def under_deepspeed_or_fsdp(training_args) -> bool:
    return bool(getattr(training_args, "deepspeed", None)) or any(
        os.environ.get(f"ACCELERATE_USE_{kind}", "").lower() in ("1", "true") for kind in ("DEEPSPEED", "FSDP")
    )


def check_retention_arguments(args, training_args, stage: str) -> None:
    """Every retention/forgetting key checked, and their files read, before any model is loaded."""
    if args.retention_eval:
        load_questions(args.retention_questions or assets.RETENTION_QUESTIONS)
    if args.measure_steps < 1 or args.forgetting_texts < 1:
        raise RecipeError(
            "`measure_steps` and `forgetting_texts` must be at least 1, got "
            f"{args.measure_steps} and {args.forgetting_texts}."
        )
    if args.task_target_nll is not None:
        if stage != "sft":
            raise RecipeError("`task_target_nll` is an SFT key (the held-out answers' NLL); DPO has no such target.")
        if not 0 < args.task_target_nll < math.inf:
            raise RecipeError(f"`task_target_nll` must be a positive NLL per token, got {args.task_target_nll}.")
    if args.forgetting_budget is not None:
        if not 0 < args.forgetting_budget < math.inf:
            raise RecipeError(f"`forgetting_budget` must be a positive KL per token, got {args.forgetting_budget}.")
        load_general_text(args.general_text or assets.GENERAL_TEXT)
    check_replay_arguments(args, stage)
    if (args.forgetting_budget is not None or args.task_target_nll is not None) and under_deepspeed_or_fsdp(
        training_args
    ):
        raise RecipeError(
            "`forgetting_budget` and `task_target_nll` are not supported under DeepSpeed or FSDP (the "
            "adapter would have to be gathered for each measurement); use one process or DDP."
        )
    if (args.replay_share or args.anchor_weight) and under_deepspeed_or_fsdp(training_args):
        raise RecipeError(
            "`replay_share` and `anchor_weight` are not supported under DeepSpeed or FSDP (the base "
            "answers the replay prompts before training, unsharded); use one process (or DDP for "
            "replay), or turn them off with `--anchor_weight 0 --replay_share 0`."
        )


def check_data_type(args, train_dataset, text_field: str = "text", assistant_only_loss: bool = False) -> None:
    """Replay adds conversations to the training rows, the task target scores their answers, and
    `assistant_only_loss` trains on the assistant's turns: with SFT rows that cannot take the one or have none of the
    others, they are refused before any model is loaded."""
    if "chosen" in train_dataset.column_names or len(train_dataset) == 0:
        return  # DPO: its keys are checked by `check_retention_arguments`
    first = train_dataset[0]
    kind = row_type(SFT, first, text_field)
    if args.replay_share and not ("messages" in first or is_conversation(first.get("prompt"))):
        raise RecipeError(
            f"`replay_share` adds conversations (the base model's answers) to the training rows, but they are "
            f"{row_form(SFT, first, text_field)}; drop `replay_share`, or train on conversational rows (`messages`, "
            "or prompt-completion conversations)."
        )
    if assistant_only_loss and not ("messages" in first or is_conversation(first.get("prompt"))):
        raise RecipeError(
            f"`assistant_only_loss: true` trains on the assistant's turns, but the training rows are "
            f"{row_form(SFT, first, text_field)}, which have none; drop it, or train on conversational rows."
        )
    if args.task_target_nll is not None and kind is LANGUAGE_MODELING:
        raise RecipeError(
            f"`task_target_nll` stops training at an NLL of the training rows' answers, but language modeling rows "
            f"(`{text_field}`) have no answer; drop it, or train on conversational or prompt-completion rows."
        )


def _peft_model(trainer):
    return trainer.accelerator.unwrap_model(trainer.model)


class RetentionCheck:
    """The retention questions asked with the adapter off (once: which questions the base knows) and on.

    A run that continues an adapter whose own run measured retention on the same questions takes the questions its
    base knows, and its retention, from that run's record (`prior`): the starting adapter is the same model."""

    def __init__(self, path: str | None, prior: dict | None = None):
        path = path or assets.RETENTION_QUESTIONS
        self.questions: list[Question] = load_questions(path)
        self.digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        self.known: list[Question] | None = None
        self.prior_retention: float | None = None
        if prior and prior.get("questions_sha256") == self.digest:
            by_id = {q.id: q for q in self.questions}
            self.known = [by_id[i] for i in prior["known_ids"] if i in by_id]
            self.prior_retention = prior.get("retention")

    def measure(self, trainer, when: str) -> dict:
        """Retention of the model as it is now (adapter on), on the questions its base answers correctly."""
        model, tokenizer = _peft_model(trainer), trainer.processing_class
        if self.known is None:
            self.known = known_questions(model, tokenizer, self.questions)
        if when == "before" and self.prior_retention is not None:
            return {
                "retention": self.prior_retention,
                "known_to_base": len(self.known),
                "lost": [],
                "from_previous_run": True,
            }
        if when == "before" and self.known and adapter_is_identity(model, model.active_adapter):
            return full_retention(self.known)  # the untrained adapter is exactly the base
        return knowledge_retention(model, tokenizer, self.known)

    def record(self, retention: float, lost: list[str]) -> dict:
        """What goft_run.json keeps: the questions the base knows (a run continuing this adapter need not ask the
        base again), the retention and the ids of the questions lost."""
        return {
            "questions_sha256": self.digest,
            "known_ids": [q.id for q in self.known],
            "retention": retention,
            "lost_ids": list(lost),
        }


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


class ForgettingBudget(TrainerCallback):
    """Stops training before forgetting (KL per token on general text) exceeds `budget`; see the module text."""

    def __init__(self, texts: list[str], budget: float, every: int, tokenizer):
        self.texts, self.budget, self.every, self.tokenizer = texts, budget, every, tokenizer
        self.base_logits = BaseLogitsCache()  # the base's logits on the texts, computed once
        self.kept_step: int | None = None
        self.kept_kl = 0.0
        self.kept_state: dict[str, torch.Tensor] | None = None
        self.exceeded: tuple[int, float] | None = None
        self.history: list[tuple[int, float]] = []

    def measure(self, model) -> float:
        shift = general_text_shift(
            model, self.tokenizer, self.texts, max_length=BUDGET_MAX_LENGTH, base_cache=self.base_logits
        )
        return shift["kl_base_tuned"]

    def _check(self, model, step: int) -> float:
        kl = self.measure(model)
        self.history.append((step, kl))
        if kl <= self.budget:
            self.kept_step, self.kept_kl, self.kept_state = step, kl, _trainable_state(model)
        return kl

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        kl = self._check(model, state.global_step)
        if kl > self.budget:
            raise RecipeError(
                f"The model already forgets more than `forgetting_budget` before this run trains: KL "
                f"{kl:.4g} > {self.budget:g} per token at step {state.global_step} (the adapter it "
                "starts from). Raise the budget, or start from a less-trained adapter."
            )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every or state.global_step == (self.history[-1][0] if self.history else -1):
            return
        kl = self._check(model, state.global_step)
        logger.info("forgetting at step %d: KL %.4g per token (budget %g)", state.global_step, kl, self.budget)
        if kl > self.budget:
            self.exceeded = (state.global_step, kl)
            control.should_training_stop = True
            control.should_save = False  # no checkpoint of an adapter over the budget

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.exceeded is None:
            return
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in self.kept_state:
                    parameter.copy_(self.kept_state[name])
        logger.warning(
            "Forgetting reached KL %.4g > budget %g at step %d: training stopped, and the result is the "
            "adapter of step %d (KL %.4g).",
            self.exceeded[1],
            self.budget,
            self.exceeded[0],
            self.kept_step,
            self.kept_kl,
        )

    def metrics(self) -> dict:
        """What the summary and the model card report."""
        found = {
            "forgetting/budget_kl": self.budget,
            "forgetting/kept_step": self.kept_step,
            "forgetting/kept_kl": self.kept_kl,
            "forgetting/measured_steps": " ".join(f"{s}:{kl:.3g}" for s, kl in self.history),
        }
        if self.exceeded is not None:
            found.update({"forgetting/stopped_at_step": self.exceeded[0], "forgetting/stopped_kl": self.exceeded[1]})
        return found


class TaskTarget(TrainerCallback):
    """Stops training once the answers' NLL per token on `rows` (training conversations) is at most `target`; see
    the module text."""

    def __init__(self, rows, target: float, every: int, tokenizer, max_length: int):
        self.rows, self.target, self.every = rows, target, every
        self.tokenizer, self.max_length = tokenizer, max_length
        self.reached: tuple[int, float] | None = None
        self.last: tuple[int, float] | None = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every or self.reached is not None:
            return
        nll = answer_nll(model, self.tokenizer, self.rows, max_length=self.max_length)["answer_nll_tuned"]
        self.last = (state.global_step, nll)
        logger.info("training answers' NLL at step %d: %.4g (target %g)", state.global_step, nll, self.target)
        if nll <= self.target:
            self.reached = (state.global_step, nll)
            control.should_training_stop = True
            control.should_save = False  # the run ends here and saves its adapter itself

    def metrics(self) -> dict:
        found = {"task_target/nll": self.target}
        if self.last is not None:
            found["task_target/last_measured_nll"] = self.last[1]
        if self.reached is not None:
            found.update({"task_target/reached_at_step": self.reached[0]})
        return found


TARGET_ROWS = 32  # training conversations the task target is measured on


def make_callbacks(args, tokenizer, train_dataset, max_length: int) -> list[TrainerCallback]:
    """The measuring callbacks the recipe keys ask for."""
    callbacks = []
    if args.task_target_nll is not None:
        rows = train_dataset.select(range(min(TARGET_ROWS, len(train_dataset))))
        callbacks.append(TaskTarget(rows, args.task_target_nll, args.measure_steps, tokenizer, max_length))
    if args.forgetting_budget is not None:
        texts = load_general_text(args.general_text or assets.GENERAL_TEXT)[: args.forgetting_texts]
        callbacks.append(ForgettingBudget(texts, args.forgetting_budget, args.measure_steps, tokenizer))
    return callbacks
