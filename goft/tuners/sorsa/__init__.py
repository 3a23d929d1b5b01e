"""SORSA (Cao, arXiv 2409.00055) as a peft method: trainable top singular triplets over a frozen residual."""

from goft.tuners.sorsa.config import SorsaConfig
from goft.tuners.sorsa.layer import SorsaLayer
from goft.tuners.sorsa.model import SorsaModel

__all__ = ["SorsaConfig", "SorsaLayer", "SorsaModel"]
