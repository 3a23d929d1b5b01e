"""How results are written, the same way everywhere (evaluation reports, model cards, benchmarks): standard JSON and
Markdown tables."""

import json
import math
from pathlib import Path


def json_safe(value):
    """NaN and infinities become null, so that the JSON files stay standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path, payload) -> Path:
    """`payload` as indented standard JSON (non-JSON values as their string), its folder created; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(payload), indent=2, default=str) + "\n")
    return path


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; each cell is written with `str` and a `|` in it is escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
