"""One renderer for evaluation results, shared by `evaluate.py` and `compare.py`: the Markdown table of adapters and
standard JSON (a sweep's frontiers and plot: `sweep`, `sweep_plot`)."""

import math
from pathlib import Path

from goft.io.formats import markdown_table, write_json
from goft.io.outputs import refuse_finished_output

TASK_LEVELS = (0.5, 0.1, 0.02)  # task levels (held-out answer NLL per token) at which methods are compared


def number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return "0" if value == 0 else f"{value:.{digits}g}"


def _task_cell(task: dict | None) -> str:
    if not task:
        return "—"
    if task["task"] == "exact_match":
        return f"exact match {number(task['exact_match_base'])} → {number(task['exact_match_tuned'])}"
    return (
        f"chosen preferred {number(task['chosen_preferred_base'])} → {number(task['chosen_preferred_tuned'])}; "
        f"reward acc {number(task['preference_accuracy'])}, margin {task['reward_margin']:+.3g}"
    )


def _nll_cell(task: dict | None) -> str:
    if not task or "answer_nll_base" not in task:
        return "—"
    return f"{number(task['answer_nll_base'])} → {number(task['answer_nll_tuned'])}"


def _perplexity_cell(row: dict) -> str:
    if "perplexity_base" not in row:
        return "—"
    return f"{row['perplexity_base']:.4g} → {row['perplexity_tuned']:.4g}"


def _retention_cell(knowledge: dict | None) -> str:
    if not knowledge or not knowledge["known_to_base"]:
        return "—"
    return f"{knowledge['retention']:.3f} ({knowledge['retained']}/{knowledge['known_to_base']})"


def _drift_cell(drift: dict | None) -> str:
    if not drift:
        return "—"
    return (
        f"KL {number(drift['answer_kl_base_tuned'])}; length {drift['answer_length_base']:.0f} → "
        f"{drift['answer_length_tuned']:.0f}"
    )


# header -> cell of a row; a column whose cells are all "—" is left out of the table
COLUMNS = (
    ("run", lambda row: row.get("name") or row["adapter"]),
    ("method", lambda row: row.get("label", row["method"])),
    ("trainable params", lambda row: f"{row['trainable_parameters']:,}"),
    ("lr", lambda row: number(row.get("learning_rate"))),
    ("task: base → tuned", lambda row: _task_cell(row.get("task"))),
    ("answer NLL/token: base → tuned", lambda row: _nll_cell(row.get("task"))),
    ("KL(base‖tuned)/token, general text", lambda row: number(row.get("kl_base_tuned"))),
    ("perplexity: base → tuned", _perplexity_cell),
    ("retention: share (kept/known)", lambda row: _retention_cell(row.get("knowledge"))),
    ("open answers: KL on base's; length base → tuned", lambda row: _drift_cell(row.get("drift"))),
    ("orthogonality error", lambda row: number(row.get("orthogonality_error"), 2)),
    ("max neuron-angle change (°)", lambda row: number(row.get("max_neuron_angle_change_deg"), 2)),
)


def render_table(rows: list[dict]) -> str:
    """A Markdown table with one row per evaluated adapter (see `runner.measure`)."""
    cells = [[cell(row) for _, cell in COLUMNS] for row in rows]
    keep = [i for i in range(len(COLUMNS)) if any(c[i] != "—" for c in cells)] or list(range(len(COLUMNS)))
    return markdown_table([COLUMNS[i][0] for i in keep], [[c[i] for i in keep] for c in cells]) + "\n"


# ---- files --------------------------------------------------------------------------------------------------------


EVALUATION_JSON, EVALUATION_TABLE = "evaluation.json", "evaluation.md"


def write_evaluation(
    results: list[dict], output_dir, settings: dict | None = None, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write evaluation.json (settings and full results) and evaluation.md (the table); returns both paths."""
    refuse_finished_output(output_dir, EVALUATION_JSON, "an evaluation", overwrite)
    folder = Path(output_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    results_path, table_path = folder / EVALUATION_JSON, folder / EVALUATION_TABLE
    write_json(results_path, {"settings": settings or {}, "results": results})
    table_path.write_text("# Retention evaluation\n\n" + render_table(results))
    return results_path, table_path
