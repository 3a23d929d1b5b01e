"""The trainers the recipes run (`GoftSFTTrainer`, `GoftDPOTrainer`: TRL's, with `GoftTrainerMixin`) and the losses
they add: the regularisers (`regularized`), the anchor (`anchor`), SFT replay (`replay`) and the forgetting budget
(`forgetting`).

May import: `goft.evaluation` (the measures), `goft.data`, `goft.io`, `goft.regularizers`, `goft.training.runs`,
`goft.training.parallel`, trl.
"""

from goft.training.trainers.dpo import GoftDPOTrainer
from goft.training.trainers.mixin import GoftTrainerMixin
from goft.training.trainers.sft import GoftSFTTrainer

__all__ = ["GoftDPOTrainer", "GoftSFTTrainer", "GoftTrainerMixin"]
