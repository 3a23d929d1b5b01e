"""The one exception type the recipes turn into a short message and a non-zero exit."""


class RecipeError(ValueError):
    """A recipe was asked for something it cannot do; the message says what and how to fix it."""


class NonFiniteLossError(RecipeError):
    """Training was stopped because the loss became NaN or infinite; the message names the step and the checkpoint."""
