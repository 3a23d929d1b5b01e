"""Where goft keeps what it computes once and reuses across runs: one folder per store, under the user's cache
(``$XDG_CACHE_HOME/goft/<store>``, else ``~/.cache/goft/<store>``), moved by the store's environment variable and
turned off by setting it to ``off``."""

import os
from pathlib import Path

OFF_VALUES = ("off", "0", "false", "none")


def cache_folder(variable: str, store: str) -> Path | None:
    """The folder of the store `store`, or None when the environment variable `variable` turns it off."""
    configured = os.environ.get(variable, "").strip()
    if configured.lower() in OFF_VALUES:
        return None
    if configured:
        return Path(configured).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "goft" / store
