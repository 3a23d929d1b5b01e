"""Faults a recipe run survives or stops on cleanly: checkpoints are complete or set aside, a non-finite loss stops
training before it reaches the adapter, and a strict adapter is never saved when it is no longer orthogonal.

`SafeguardsMixin` goes before TRL's trainer class (`goft.training.trainers.mixin.GoftTrainerMixin` puts it there):

- `_save_checkpoint`: transformers writes straight into `checkpoint-N` and deletes old checkpoints at the end
  (`save_total_limit`). Here the old ones stay until every process has written its part and the main process has
  marked the new checkpoint complete (`checkpoints.mark_complete`); only then are old ones rotated away;
- `training_step`: every process learns whether any process's loss is NaN or infinite, and all stop together with
  `NonFiniteLossError` before the optimizer step.
"""

from __future__ import annotations

import math
import os

import torch
from transformers import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from goft.errors import NonFiniteLossError, RecipeError
from goft.training.runs import checkpoints
from goft.training.runs.run_spec import SPEC_KEY
from goft.tuners.orthogonality import orthogonality_error

ORTHOGONALITY_TOLERANCE = 1e-5


def checked_orthogonality_error(model, consequence: str) -> float:
    """The strict adapter's `orthogonality_error`; above `ORTHOGONALITY_TOLERANCE` a `RecipeError` whose message
    ends with `consequence` (what was not written)."""
    error = orthogonality_error(model)
    if error > ORTHOGONALITY_TOLERANCE:
        raise RecipeError(
            f"The strict adapter's orthogonality error is {error:.3g} > {ORTHOGONALITY_TOLERANCE}; {consequence}."
        )
    return error


class SafeguardsMixin:
    """Mix in before a `transformers.Trainer` subclass; `strict_orthogonal` turns on the check before checkpoints."""

    strict_orthogonal: bool = False
    run_spec: dict | None = None  # what shapes the run (see `run_spec`), recorded in every checkpoint

    def _save_checkpoint(self, model, trial):
        """transformers' checkpoint, refused for a strict adapter that is no longer orthogonal, marked complete once
        every process has written its part, and only then are old checkpoints rotated away."""
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.strict_orthogonal:
            self._check_orthogonality(folder)
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # nothing old is deleted before the new checkpoint is complete
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every process has written its part (RNG state, DeepSpeed shards)
        if self.args.should_save:
            checkpoints.mark_complete(
                folder,
                {
                    "global_step": self.state.global_step,
                    "world_size": self.accelerator.num_processes,
                    SPEC_KEY: self.run_spec,
                },
            )
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=limit,
                use_mtime=True,
                best_model_checkpoint=self.state.best_model_checkpoint,
            )

    def _check_orthogonality(self, folder: str) -> None:
        """Refuse (`RecipeError`) to write `folder` when the strict adapter is no longer orthogonal."""
        try:
            checked_orthogonality_error(
                self.accelerator.unwrap_model(self.model), f"{folder} was not written, and the run stopped"
            )
        except RecipeError as error:
            raise self._stopping(error) from None

    def training_step(self, model, inputs, num_items_in_batch=None):
        """transformers' step (forward and backward), stopped on every process before the optimizer step when any
        process's loss is NaN or infinite."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        losses = self.accelerator.gather(loss.detach().float().reshape(1))  # every process sees every loss
        if not bool(torch.isfinite(losses).all()):
            raise self._stopping(NonFiniteLossError(self._non_finite_loss_message(losses.tolist())))
        return loss

    def _stopping(self, error: RecipeError) -> RecipeError:
        """`error`, once the progress bar is closed, so that the error is the last line the user sees."""
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
                callback.training_bar.close()
                callback.training_bar = None
        return error

    def _non_finite_loss_message(self, losses: list[float]) -> str:
        """What happened, where the run can resume, and what usually causes it; `losses`: one per process."""
        bad = [rank for rank, value in enumerate(losses) if not math.isfinite(value)]
        step = self.state.global_step + 1
        processes = "processes" if len(bad) > 1 else "process"
        where = f" on {processes} {', '.join(map(str, bad))} of {len(losses)}" if len(losses) > 1 else ""
        last = checkpoints.last_complete_checkpoint(self.args.output_dir)
        resume = (
            f"The last complete checkpoint is {last}; rerunning the same command resumes from it."
            if last
            else "No checkpoint was saved yet; rerunning the same command starts afresh."
        )
        return (
            f"The training loss is {losses[bad[0]]} at global step {step} of {self.state.max_steps}{where} "
            f"(counted from 1; {step - 1} optimizer steps had completed) — the run was stopped before this step "
            f"changed the adapter. {resume} Likely causes: a learning rate too high for this method (lower "
            f"`learning_rate`, add warmup or `max_grad_norm`), fp16 overflow (train in bf16 or fp32), or bad data "
            f"rows (empty or extreme examples)."
        )
