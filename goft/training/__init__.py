"""Training helpers shared by the recipes (TRL-based); importing it also registers the Givens method with peft."""

from .. import GivensConfig  # noqa: F401  (registers the method)
from .errors import RecipeError
from .models import EMBEDDED_MODELS, load_base_model, resolve_model_source

__all__ = ["EMBEDDED_MODELS", "RecipeError", "load_base_model", "resolve_model_source"]
