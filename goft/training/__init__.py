"""Training helpers shared by the recipes (TRL-based)."""

from .errors import RecipeError
from .models import EMBEDDED_MODELS, load_base_model, resolve_model_source

__all__ = ["EMBEDDED_MODELS", "RecipeError", "load_base_model", "resolve_model_source"]
