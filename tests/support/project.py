"""The repository and its pyproject.toml's [project] table, for the packaging and docs tests."""

from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "goft"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
