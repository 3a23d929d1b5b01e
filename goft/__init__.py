"""goft: Givens orthogonal fine-tuning (GOFT, ICML 2024) as a peft method.

Importing this package registers the ``givens`` method with peft (``peft_type`` "GIVENS"): afterwards
``get_peft_model(model, GivensConfig(...))`` and ``PeftModel.from_pretrained(model, path)`` work as for LoRA.
"""

from .config import GivensConfig
from .layer import GivensLayer
from .model import GivensModel
from .orthogonality import orthogonality_error, orthogonality_penalty
from .registration import GIVENS, SORSA, register
from .sorsa import SorsaConfig, SorsaModel, sorsa_orthonormality

register(GivensConfig, GivensModel)
register(SorsaConfig, SorsaModel, name="sorsa")

__version__ = "0.1.0"

__all__ = [
    "GIVENS",
    "SORSA",
    "SorsaConfig",
    "SorsaModel",
    "sorsa_orthonormality",
    "GivensConfig",
    "GivensLayer",
    "GivensModel",
    "orthogonality_error",
    "orthogonality_penalty",
]
