"""The retention report: one Markdown table row per adapter, and the evaluation.json / evaluation.md files."""

import json
import math
from pathlib import Path

from .errors import RecipeError

RESULTS_FILE = "evaluation.json"
TABLE_FILE = "evaluation.md"

COLUMNS = ("adapter", "method", "trainable params", "task: base → tuned", "KL(base‖tuned) / token",
           "perplexity: base → tuned (change)", "orthogonality error", "max neuron-angle change (°)")


def check_output_dir(output_dir, overwrite: bool) -> None:
    """Refuse to replace an earlier evaluation unless asked to; checked before anything is computed."""
    folder = Path(output_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise RecipeError(f"`output_dir` {str(output_dir)!r} is a file, not a folder.")
    if (folder / RESULTS_FILE).exists() and not overwrite:
        raise RecipeError(f"{str(output_dir)!r} already holds an evaluation ({RESULTS_FILE}). Choose another "
                          "`output_dir`, or pass `--overwrite_output_dir true` to replace it.")


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return "0" if value == 0 else f"{value:.{digits}g}"


def _task_cell(task: dict | None) -> str:
    if not task:
        return "—"
    if task["task"] == "exact_match":
        return (f"exact match {_number(task['exact_match_base'])} → {_number(task['exact_match_tuned'])} "
                f"(n={task['samples']})")
    return (f"chosen preferred {_number(task['chosen_preferred_base'])} → {_number(task['chosen_preferred_tuned'])}; "
            f"reward acc {_number(task['preference_accuracy'])}, margin {task['reward_margin']:+.3g} "
            f"(n={task['samples']})")


def _row(result: dict) -> list[str]:
    perplexity = (f"{result['perplexity_base']:.4g} → {result['perplexity_tuned']:.4g} "
                  f"({result['perplexity_change']:+.3g})")
    return [result["adapter"], result.get("label", result["method"]), f"{result['trainable_parameters']:,}",
            _task_cell(result.get("task")), _number(result["kl_base_tuned"]), perplexity,
            _number(result.get("orthogonality_error"), 2), _number(result["max_neuron_angle_change_deg"])]


def render_table(results: list[dict]) -> str:
    """A Markdown table with one row per evaluated adapter (see `retention.evaluate_adapter`)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for result in results:
        cells = [cell.replace("|", "\\|") for cell in _row(result)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json_safe(value):
    """NaN and infinities become null: evaluation.json stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(results: list[dict], output_dir, settings: dict | None = None,
                 overwrite: bool = False) -> tuple[Path, Path]:
    """Write evaluation.json (settings and full results) and evaluation.md (the table); returns both paths."""
    check_output_dir(output_dir, overwrite)
    folder = Path(output_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    results_path, table_path = folder / RESULTS_FILE, folder / TABLE_FILE
    payload = {"settings": settings or {}, "results": results}
    results_path.write_text(json.dumps(_json_safe(payload), indent=2, default=str) + "\n")
    table_path.write_text("# Retention evaluation\n\n" + render_table(results))
    return results_path, table_path
