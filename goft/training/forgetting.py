"""Forgetting measured around and during a recipe run.

- `RetentionCheck`: the retention questions before and after training: the share of the questions the base answers
  correctly that the model (its adapter on) still answers correctly.
- `ForgettingBudget`: a callback that measures KL(base ‖ tuned) per token on a few general-text paragraphs every
  `forgetting_eval_steps` optimizer steps. When a measurement exceeds the budget, training stops and the adapter
  goes back to its weights at the last measurement within the budget; that adapter is the run's result.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import TrainerCallback

from ..evaluation import assets
from ..evaluation.knowledge import Question, knowledge_retention, known_questions, load_questions
from ..evaluation.model_io import adapter_off
from ..evaluation.shift import BaseLogitsCache, general_text_shift, load_general_text
from .errors import RecipeError

logger = logging.getLogger(__name__)

BUDGET_MAX_LENGTH = 128  # tokens per general-text paragraph in the budget's measurement


def under_deepspeed_or_fsdp(training_args) -> bool:
    return bool(getattr(training_args, "deepspeed", None)) or any(
        os.environ.get(f"ACCELERATE_USE_{kind}", "").lower() in ("1", "true") for kind in ("DEEPSPEED", "FSDP"))


def check_retention_arguments(args, training_args) -> None:
    """Every retention/forgetting key checked, and their files read, before any model is loaded."""
    if args.retention_questions and not args.retention_eval:
        raise RecipeError("`retention_questions` is set but `retention_eval` is off; set `retention_eval: true`.")
    if args.retention_eval:
        load_questions(args.retention_questions or assets.RETENTION_QUESTIONS)
    if args.forgetting_budget is None:
        return
    if not args.forgetting_budget > 0:
        raise RecipeError(f"`forgetting_budget` must be a positive KL per token, got {args.forgetting_budget}.")
    if args.forgetting_eval_steps < 1 or args.forgetting_texts < 1:
        raise RecipeError("`forgetting_eval_steps` and `forgetting_texts` must be at least 1, got "
                          f"{args.forgetting_eval_steps} and {args.forgetting_texts}.")
    if under_deepspeed_or_fsdp(training_args):
        raise RecipeError("`forgetting_budget` is not supported under DeepSpeed or FSDP (the adapter would have to "
                          "be gathered and restored across shards); use one process or DDP.")
    load_general_text(args.general_text or assets.GENERAL_TEXT)


def _peft_model(trainer):
    return trainer.accelerator.unwrap_model(trainer.model)


class RetentionCheck:
    """The retention questions asked with the adapter off (once: which questions the base knows) and on."""

    def __init__(self, path: str | None):
        self.questions: list[Question] = load_questions(path or assets.RETENTION_QUESTIONS)
        self.known: list[Question] | None = None

    def measure(self, trainer) -> dict:
        """Retention of the model as it is now (adapter on), on the questions its base answers correctly."""
        model, tokenizer = _peft_model(trainer), trainer.processing_class
        if self.known is None:
            with adapter_off(model):
                self.known = known_questions(model, tokenizer, self.questions)
        return knowledge_retention(model, tokenizer, self.known)


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
        shift = general_text_shift(model, self.tokenizer, self.texts, max_length=BUDGET_MAX_LENGTH,
                                   base_cache=self.base_logits)
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
            raise RecipeError(f"The model already forgets more than `forgetting_budget` before this run trains: KL "
                              f"{kl:.4g} > {self.budget:g} per token at step {state.global_step} (the adapter it "
                              "starts from). Raise the budget, or start from a less-trained adapter.")

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
        logger.warning("Forgetting reached KL %.4g > budget %g at step %d: training stopped, and the result is the "
                       "adapter of step %d (KL %.4g).", self.exceeded[1], self.budget, self.exceeded[0],
                       self.kept_step, self.kept_kl)

    def metrics(self) -> dict:
        """What the summary and the model card report."""
        found = {"forgetting/budget_kl": self.budget, "forgetting/kept_step": self.kept_step,
                 "forgetting/kept_kl": self.kept_kl,
                 "forgetting/measured_steps": " ".join(f"{s}:{kl:.3g}" for s, kl in self.history)}
        if self.exceeded is not None:
            found.update({"forgetting/stopped_at_step": self.exceeded[0], "forgetting/stopped_kl": self.exceeded[1]})
        return found


def forgetting_budget_callback(args, tokenizer) -> ForgettingBudget | None:
    if args.forgetting_budget is None:
        return None
    texts = load_general_text(args.general_text or assets.GENERAL_TEXT)[:args.forgetting_texts]
    return ForgettingBudget(texts, args.forgetting_budget, args.forgetting_eval_steps, tokenizer)
