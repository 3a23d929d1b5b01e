"""Whether a name a user gives (a model, an adapter, a dataset, a chat template) can only be a local path."""

import os


def looks_like_local_path(name: str) -> bool:
    """A name that no Hub id can be: relative (./ ../), absolute, under ~, with more than one slash, or with a
    backslash on Windows. Hub ids are `name` or `owner/name`."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep == "\\" and "\\" in name
