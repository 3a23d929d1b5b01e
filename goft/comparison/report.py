"""The comparison's report in `output_dir`: the table (`TABLE_FILE`), everything measured with the sweep frontiers
(`RESULTS_FILE`) and the plot (`PLOT_FILE`), drawn by `goft.evaluation.report`; the settings it records, by which
the same comparison started again is recognised and continued.
"""

from __future__ import annotations

import json
from pathlib import Path

from goft.comparison.arguments import CompareArguments, shared_recipe
from goft.comparison.plan import MATCHED_KEYS
from goft.evaluation.report import render_table
from goft.evaluation.sweep import render_sweep, sweep_summary, task_axis_name
from goft.evaluation.sweep_plot import plot_sweep
from goft.io.formats import write_json

RESULTS_FILE = "comparison.json"
TABLE_FILE = "comparison.md"
PLOT_FILE = "comparison.png"


def report_settings(args: CompareArguments) -> dict:
    recipe = shared_recipe(args)
    budget = {k: recipe.get(k) for k in MATCHED_KEYS if k in recipe and k != "output_dir"}
    return {
        "recipe": args.recipe,
        "stage": args.stage,
        "budget": budget,
        **args.evaluation_sets().describe(),
        "task_levels": args.task_levels,
    }


def continues_comparison(args: CompareArguments) -> bool:
    """Whether output_dir holds a report of this same comparison (same recipe, budget, sets and task levels): it is
    then continued, its finished runs reused, without `overwrite_output_dir`."""
    path = Path(args.output_dir).expanduser() / RESULTS_FILE
    try:
        return json.loads(path.read_text()).get("settings") == json.loads(json.dumps(report_settings(args)))
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def write_report(rows: list[dict], args: CompareArguments) -> None:
    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    settings = report_settings(args)
    budget = settings["budget"]
    summary = sweep_summary(rows, args.task_levels)
    write_json(folder / RESULTS_FILE, {"settings": settings, "rows": rows, "sweep": summary})
    budget_line = ", ".join(f"{k} {v}" for k, v in budget.items())
    text = f"# Method comparison\n\nMatched budget: {budget_line}.\n\n" + render_table(rows)
    if summary:
        text += "\n" + render_sweep(summary, args.task_levels, task_axis_name(rows))
    (folder / TABLE_FILE).write_text(text)
    title = (
        f"{budget.get('model_name_or_path', 'model')}: {budget.get('max_steps', '?')} {args.stage.upper()} "
        "steps per run"
    )
    plot_sweep(rows, summary, folder / PLOT_FILE, title, args.task_levels)
