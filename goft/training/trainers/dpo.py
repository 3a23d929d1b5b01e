"""`GoftDPOTrainer`: TRL's `DPOTrainer` with goft's safeguards, regularisers and resume handling, and the prompt
truncation of TRL before 1.0 (`max_prompt_length`, which alignment-handbook recipes set)."""

from trl import DPOTrainer

from goft.training.trainers.mixin import GoftTrainerMixin


class GoftDPOTrainer(GoftTrainerMixin, DPOTrainer):
    """TRL's `DPOTrainer` with what `GoftTrainerMixin` adds; takes its keyword arguments beside DPOTrainer's, and
    `max_prompt_length`: keep only each prompt's last that many tokens (None: whole prompts)."""

    def __init__(self, *args, max_prompt_length: int | None = None, **kwargs):
        if max_prompt_length is not None and (isinstance(max_prompt_length, bool) or max_prompt_length < 1):
            raise ValueError(f"max_prompt_length must be a whole number of tokens ≥ 1, got {max_prompt_length!r}.")
        self.max_prompt_length = max_prompt_length
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if self.max_prompt_length is None:
            return dataset
        limit = self.max_prompt_length
        # the prompt's end is kept: it is the turn the replies answer (TRL's prompt truncation before 1.0)
        return dataset.map(
            lambda row: {"prompt_ids": row["prompt_ids"][-limit:]},
            desc=f"Keeping the last {limit} prompt tokens of {dataset_name} dataset",
        )
