"""goft: Givens orthogonal fine-tuning (GOFT, ICML 2024) as a peft method.

Importing this package registers the ``givens`` method with peft (``peft_type`` "GIVENS"): afterwards
``get_peft_model(model, GivensConfig(...))`` and ``PeftModel.from_pretrained(model, path)`` work as for LoRA.
"""

from goft.registration import GIVENS, SORSA, register
from goft.regularizers import (
    Regularizer,
    hra_orthogonality,
    orthogonality_penalty,
    regularizers_for,
    sorsa_orthonormality,
)
from goft.tuners.givens.config import GivensConfig
from goft.tuners.givens.layer import GivensLayer
from goft.tuners.givens.model import GivensModel
from goft.tuners.givens.rotation_cache import drop_rotation_caches, rotations_rebuilt_each_call
from goft.tuners.orthogonality import orthogonality_error
from goft.tuners.sorsa import SorsaConfig, SorsaModel

register(GivensConfig, GivensModel)
register(SorsaConfig, SorsaModel, name="sorsa")

__version__ = "0.1.0"

__all__ = [
    "GIVENS",
    "Regularizer",
    "hra_orthogonality",
    "regularizers_for",
    "SORSA",
    "SorsaConfig",
    "SorsaModel",
    "sorsa_orthonormality",
    "GivensConfig",
    "GivensLayer",
    "GivensModel",
    "orthogonality_error",
    "orthogonality_penalty",
    "register",
    "drop_rotation_caches",
    "rotations_rebuilt_each_call",
]
