"""`GoftSFTTrainer`: TRL's `SFTTrainer` with goft's safeguards, regularisers and resume handling."""

from trl import SFTTrainer

from goft.training.trainers.mixin import GoftTrainerMixin


class GoftSFTTrainer(GoftTrainerMixin, SFTTrainer):
    """TRL's `SFTTrainer` with what `GoftTrainerMixin` adds; takes its keyword arguments beside SFTTrainer's."""
