"""Adds regularisers (`goft.regularizers`: qGOFT, SORSA, HRA; and the anchor) to a trainer's training and logs each as
its own metric.

Two placements, one mechanism:

- in the loss (qGOFT, HRA): ``loss += weight · value``, counted once per optimizer step whatever the gradient
  accumulation or the number of processes;
- after gradient clipping (SORSA, Cao 2024): once the task gradient is clipped, the gradient of
  ``(weight / lr) · value`` is added, so that for SGD the regulariser's own step is ``weight`` whatever the learning
  rate, and clipping never shrinks it. DeepSpeed clips and steps inside its engine, leaving no point in between:
  there the same term goes into the loss instead (before clipping), with a warning.
"""

from __future__ import annotations

import logging

import torch
from peft.utils.integrations import gather_params_ctx
from transformers import TrainerCallback
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from goft.regularizers import Regularizer

logger = logging.getLogger(__name__)


class RegularizedLossMixin:
    """Mix in before a `transformers.Trainer` subclass (e.g. TRL's SFTTrainer) with `regularizers` set."""

    regularizers: tuple[Regularizer, ...] = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._regularizer_values: dict[str, list[float]] = {}
        if any(r.after_clipping for r in self.regularizers) and self.is_deepspeed_enabled:
            logger.warning(
                "DeepSpeed clips gradients and steps inside its engine, so the regulariser(s) %s are added "
                "to the loss with weight gamma / lr, before clipping rather than after it.",
                [r.metric for r in self.regularizers if r.after_clipping],
            )
        elif any(r.after_clipping for r in self.regularizers):
            self.add_callback(_AfterClippingRegularizers(self))

    def _loss_regularizers(self):
        return [r for r in self.regularizers if not r.after_clipping or self.is_deepspeed_enabled]

    def _record(self, regularizer: Regularizer, value: torch.Tensor) -> None:
        self._regularizer_values.setdefault(regularizer.metric, []).append(value.detach().float().item())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if not model.training:
            return result
        extra = None
        for regularizer in self._loss_regularizers():
            value = self._loss_term_value(regularizer, model)
            if not value.requires_grad:
                continue
            self._record(regularizer, value)
            weight = regularizer.weight
            if regularizer.after_clipping:  # DeepSpeed: the same gradient scale, before clipping
                lr = self.optimizer.param_groups[0]["lr"]  # the lr of this step (the scheduler steps after it)
                weight = weight / lr if lr > 0 else 0.0
            term = weight * value
            extra = term if extra is None else extra + term
        if extra is None:
            return result
        if self._trainer_skips_accumulation_division(num_items_in_batch):
            extra = extra / self.current_gradient_accumulation_steps
        if return_outputs:
            loss, outputs = result
            return loss + extra.to(loss.device, loss.dtype), outputs
        return result + extra.to(result.device, result.dtype)

    def _loss_term_value(self, regularizer: Regularizer, model) -> torch.Tensor:
        """The regulariser's value; under ZeRO-3 from the gathered adapter tensors. Tensors autograd saves are then
        copies, since the parameters are re-partitioned before backward; the gradients still reach the parameters
        (their accumulation waits for the model's own backward, when DeepSpeed has gathered them again)."""
        if not is_deepspeed_zero3_enabled():
            return regularizer.value(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        copies = torch.autograd.graph.saved_tensors_hooks(_copy_if_partitioned, _same)
        with gather_params_ctx(trainable, modifier_rank=None), copies:
            return regularizer.value(model)

    def _trainer_skips_accumulation_division(self, num_items_in_batch) -> bool:
        # Mirrors transformers.Trainer.training_step: it divides by the accumulation steps unless this holds.
        if getattr(self, "loss_is_scaled_for_ga", None) is not None:
            return bool(self.loss_is_scaled_for_ga)
        return bool(
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
        )

    def apply_after_clipping_regularizers(self, model, optimizer) -> None:
        """SORSA's rule (Cao 2024): grad += (weight / lr) · ∇value, per parameter group, after clipping."""
        groups = [g for g in optimizer.param_groups if any(p.requires_grad for p in g["params"])]
        for regularizer in self.regularizers:
            if not regularizer.after_clipping:
                continue
            with torch.enable_grad():
                value = regularizer.value(model)
            if not value.requires_grad:
                continue
            self._record(regularizer, value)
            params = [p for g in groups for p in g["params"] if p.requires_grad]
            grads = torch.autograd.grad(value, params, allow_unused=True)
            by_param = dict(zip(map(id, params), grads))
            for group in groups:
                if group["lr"] <= 0:
                    continue  # nothing moves this step; an infinite weight would poison the optimizer's state
                scale = regularizer.weight / group["lr"]
                for param in group["params"]:
                    grad = by_param.get(id(param))
                    if grad is None:
                        continue
                    if param.grad is None:
                        param.grad = scale * grad.to(param.dtype)
                    else:
                        param.grad.add_(grad.to(param.grad.dtype), alpha=scale)

    def log(self, logs, *args, **kwargs):
        if not any(key.startswith("eval_") for key in logs):
            for metric, values in self._regularizer_values.items():
                if values:
                    logs[metric] = sum(values) / len(values)
                    values.clear()
        return super().log(logs, *args, **kwargs)


def _copy_if_partitioned(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone() if hasattr(tensor, "ds_id") else tensor


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class _AfterClippingRegularizers(TrainerCallback):
    """Runs between gradient clipping and the optimizer step (`on_pre_optimizer_step`)."""

    def __init__(self, trainer: RegularizedLossMixin):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        trainer.apply_after_clipping_regularizers(trainer.accelerator.unwrap_model(trainer.model), trainer.optimizer)


def with_regularizers(trainer_class, regularizers: tuple[Regularizer, ...]):
    """`trainer_class` extended by `RegularizedLossMixin` with these regularisers (unchanged when there are none)."""
    if not regularizers:
        return trainer_class
    return type(
        f"Regularized{trainer_class.__name__}",
        (RegularizedLossMixin, trainer_class),
        {"regularizers": tuple(regularizers)},
    )
