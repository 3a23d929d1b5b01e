"""Adds an adapter's regulariser (the qGOFT orthogonality penalty) to a trainer's loss and logs it on its own."""

import torch

from ..orthogonality import orthogonality_penalty

PENALTY_METRIC = "orthogonality_penalty"


class RegularizedLossMixin:
    """Mix in before a `transformers.Trainer` subclass: loss += penalty, counted once per optimizer step.

    The penalty's gradient must not depend on gradient accumulation or the number of processes: when the trainer
    leaves the loss undivided by the accumulation steps (the loss is already normalised over the whole accumulated
    batch), the penalty is divided here instead. Across DDP ranks the penalty is identical, so averaging keeps it.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if not model.training:
            return result
        penalty = orthogonality_penalty(model)
        if not torch.is_tensor(penalty) or not penalty.requires_grad:
            return result
        self._penalty_values = getattr(self, "_penalty_values", [])
        self._penalty_values.append(penalty.detach().float().item())
        if self._trainer_skips_accumulation_division(num_items_in_batch):
            penalty = penalty / self.current_gradient_accumulation_steps
        if return_outputs:
            loss, outputs = result
            return loss + penalty.to(loss.dtype), outputs
        return result + penalty.to(result.dtype)

    def _trainer_skips_accumulation_division(self, num_items_in_batch) -> bool:
        # Mirrors transformers.Trainer.training_step: it divides by the accumulation steps unless this holds.
        if getattr(self, "loss_is_scaled_for_ga", None) is not None:
            return bool(self.loss_is_scaled_for_ga)
        return bool((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                    or self.compute_loss_func is not None)

    def log(self, logs, *args, **kwargs):
        values = getattr(self, "_penalty_values", [])
        if values and not any(key.startswith("eval_") for key in logs):
            logs[PENALTY_METRIC] = sum(values) / len(values)
            values.clear()
        return super().log(logs, *args, **kwargs)


def with_regularizer(trainer_class):
    """`trainer_class` extended by `RegularizedLossMixin` (e.g. TRL's SFTTrainer)."""
    return type(f"Regularized{trainer_class.__name__}", (RegularizedLossMixin, trainer_class), {})
