"""``SorsaConfig``: the peft configuration of a SORSA adapter (Cao, arXiv 2409.00055)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from goft.registration import SORSA


@dataclass
class SorsaConfig(PeftConfig):
    """Singular vectors and values of the top ``r`` singular triplets of each adapted weight are trained; the rest
    of the weight (the residual) stays frozen. ``gamma`` weighs the orthonormality regulariser of the vectors."""

    r: int = field(default=128, metadata={"help": "How many top singular triplets are trainable."})
    gamma: float = field(default=4e-4, metadata={"help": "Weight γ of the orthonormality regulariser (paper: 4e-4)."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names, a regex, or 'all-linear'; default: the model type's usual set."}
    )
    exclude_modules: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "Modules to skip."})
    layers_to_transform: Optional[Union[list[int], int]] = field(default=None, metadata={"help": "Layer indices."})
    layers_pattern: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "Layer name pattern."})
    modules_to_save: Optional[list[str]] = field(default=None, metadata={"help": "Extra modules trained in full."})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = SORSA
        if self.r < 1:
            raise ValueError(f"SORSA needs r >= 1, got {self.r}.")
        if self.gamma < 0:
            raise ValueError(f"SORSA's gamma must be >= 0, got {self.gamma}.")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
