"""What the recipes do around their TRL trainers, by concern: `arguments` (keys, checks, parsing), `runs`
(checkpoints, resume, safeguards), `trainers` (named trainers and the losses they add), `parallel` (processes, FSDP),
`publish` (model card, Hub, logging, merging). `recipe` is what every stage does, from check to publish; `adapters`
decides which adapter a stage trains.

May import: `goft.evaluation`, `goft.data`, `goft.io`, the tuners and the core. Not `goft.comparison`.
"""

from goft.errors import RecipeError
from goft.io.model_source import EMBEDDED_MODELS, load_base_model, resolve_model_source

__all__ = ["EMBEDDED_MODELS", "RecipeError", "load_base_model", "resolve_model_source"]
