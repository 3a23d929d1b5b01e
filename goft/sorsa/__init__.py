"""SORSA (Cao, arXiv 2409.00055) as a peft method: trainable top singular triplets over a frozen residual."""

from .config import SorsaConfig
from .layer import SorsaLayer
from .model import SorsaModel

__all__ = ["SorsaConfig", "SorsaLayer", "SorsaModel"]
