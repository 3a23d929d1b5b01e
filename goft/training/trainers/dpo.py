"""`GoftDPOTrainer`: TRL's `DPOTrainer` with goft's safeguards, regularisers and resume handling."""

from trl import DPOTrainer

from goft.training.trainers.mixin import GoftTrainerMixin


class GoftDPOTrainer(GoftTrainerMixin, DPOTrainer):
    """TRL's `DPOTrainer` with what `GoftTrainerMixin` adds; takes its keyword arguments beside DPOTrainer's."""
