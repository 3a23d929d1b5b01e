"""One renderer for evaluation results, shared by `evaluate.py` and `compare.py`: the Markdown table of adapters,
the frontier table of a learning-rate sweep, standard JSON, and the plot of forgetting against task level."""

import math
from dataclasses import replace
from pathlib import Path

from goft.evaluation.frontier import Point, common_levels, forgetting_at, pareto_frontier
from goft.io.formats import markdown_table, write_json
from goft.io.outputs import refuse_finished_output

TASK_LEVELS = (0.5, 0.1, 0.02)  # task levels (held-out answer NLL per token) at which methods are compared
# the task level of a run, lower is better: (row["task"] key of the tuned model, of the base, how it reads)
TASK_AXES = {
    "exact_match": ("answer_nll_tuned", "answer_nll_base", "answer NLL"),
    "preference": ("preference_loss_tuned", "preference_loss_base", "preference loss"),
}
FORGETTING_MEASURES = {  # name -> (how it reads in a table, function of a row; None when not measured)
    "kl": ("KL(base‖tuned)/token on general text", lambda row: row.get("kl_base_tuned")),
    "lost": (
        "retention questions lost",
        lambda row: 1.0 - row["knowledge"]["retention"] if (row.get("knowledge") or {}).get("known_to_base") else None,
    ),
}


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


# ---- learning-rate sweeps -----------------------------------------------------------------------------------------


def _task_levels(row: dict) -> tuple[float | None, float | None]:
    """(tuned, base) task level of a row: held-out answer NLL per token (SFT) or preference loss (DPO)."""
    task = row.get("task") or {}
    tuned, base, _ = TASK_AXES.get(task.get("task"), (None, None, None))
    return task.get(tuned), task.get(base)


def task_axis_name(rows: list[dict]) -> str:
    """How the rows' task level reads ("answer NLL", "preference loss")."""
    kinds = {(row.get("task") or {}).get("task") for row in rows} & set(TASK_AXES)
    return TASK_AXES[kinds.pop()][2] if len(kinds) == 1 else "task level"


def method_points(rows: list[dict], measure: str) -> tuple[dict[str, list[Point]], dict[str, Point]]:
    """Per method (row `group`), its runs as (task level, forgetting) points, and the base's point."""
    forgetting = FORGETTING_MEASURES[measure][1]
    points, bases = {}, {}
    for row in rows:
        (level, base), value = _task_levels(row), forgetting(row)
        if level is None or base is None or value is None:
            continue
        group = row.get("group", row.get("name", row.get("adapter")))
        points.setdefault(group, []).append(Point(level, value, row.get("name", "")))
        bases[group] = Point(base, 0.0, "base")
    return points, bases


def sweep_summary(rows: list[dict], levels=TASK_LEVELS) -> dict:
    """Per forgetting measure: each method's Pareto frontier and its forgetting interpolated at `levels`, and the
    levels every method reaches."""
    summary = {}
    for measure in FORGETTING_MEASURES:
        points, bases = method_points(rows, measure)
        if not points:
            continue
        frontiers = {group: pareto_frontier(p) for group, p in points.items()}
        summary[measure] = {
            "common_levels": common_levels(frontiers, list(levels)),
            "methods": {
                group: {
                    "frontier": [{"run": p.label, "task_level": p.task, "forgetting": p.forgetting} for p in frontier],
                    "at_level": {str(level): forgetting_at(frontier, level, bases[group]) for level in levels},
                }
                for group, frontier in frontiers.items()
            },
        }
    return summary


def render_sweep(summary: dict, levels=TASK_LEVELS, axis: str = "answer NLL") -> str:
    """Markdown: per forgetting measure, each method's forgetting at the task levels (`axis`: how the task level
    reads) and its frontier runs."""
    parts = []
    for measure, result in summary.items():
        title = FORGETTING_MEASURES[measure][0]
        header = ["method", *(f"at {axis} {level:g}" for level in levels), f"frontier runs ({axis}, forgetting)"]
        body = []
        for group, method in result["methods"].items():
            frontier = ", ".join(
                f"{p['run']} ({number(p['task_level'])}, {number(p['forgetting'])})" for p in method["frontier"]
            )
            body.append([group, *(number(method["at_level"][str(level)]) for level in levels), frontier])
        reached = ", ".join(f"{level:g}" for level in result["common_levels"]) or "none"
        parts.append(
            f"### Forgetting ({title}) at equal task level\n\nEvery method reaches {axis}: {reached}. "
            "A dash: that method's most trained run did not reach the level.\n\n" + markdown_table(header, body) + "\n"
        )
    return "\n".join(parts)


AXIS_DECADES_BEYOND_LEVELS = 2  # the plot's x axis ends this many decades past the smallest compared task level


def axis_floor(points: list[Point], task_levels) -> float | None:
    """The smallest task level the plot's x axis shows: two decades past the smallest level compared, so that an
    over-trained run (a DPO preference loss of 1e-60) does not squeeze the levels that matter into a corner; None
    (no clipping) when no run goes past it."""
    if not task_levels:
        return None
    floor = min(task_levels) / 10**AXIS_DECADES_BEYOND_LEVELS
    return floor if any(p.task < floor for p in points) else None


def at_floor(points: list[Point], floor: float | None) -> list[Point]:
    """The points with their task level raised to `floor` where it is below (drawn at the axis' edge)."""
    if floor is None:
        return list(points)
    return [replace(p, task=max(p.task, floor)) for p in points]


def plot_sweep(rows: list[dict], path: Path, title: str, task_levels=TASK_LEVELS) -> None:
    """Forgetting (y) against the held-out task level (x: answer NLL or preference loss, log scale, more learned to
    the right), one panel per forgetting measure, one curve per method through its Pareto frontier from the base;
    every run is a dot. Runs more than two decades past the smallest of `task_levels` are drawn at the axis' edge
    as hollow markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = [m for m in FORGETTING_MEASURES if method_points(rows, m)[0]]
    if not measures:
        return
    figure, axes = plt.subplots(1, len(measures), figsize=(6.5 * len(measures), 4.8), dpi=120, squeeze=False)
    markers = "osD^v<>pPX*h"
    groups = max(len(method_points(rows, m)[0]) for m in measures)
    colours = [f"C{i}" for i in range(10)] if groups <= 10 else list(plt.get_cmap("tab20").colors)  # one per method
    for axis, measure in zip(axes[0], measures):
        points, bases = method_points(rows, measure)
        floor = axis_floor([p for runs in points.values() for p in runs], task_levels)
        for index, (group, runs) in enumerate(points.items()):
            colour, marker = colours[index % len(colours)], markers[index % len(markers)]
            curve = sorted(pareto_frontier(runs) + [bases[group]], key=lambda p: -p.task)
            axis.plot(
                [p.task for p in at_floor(curve, floor)],
                [p.forgetting for p in curve],
                color=colour,
                marker=marker,
                label=group,
                zorder=3,
            )
            others = at_floor([p for p in runs if p not in curve], floor)
            axis.scatter(
                [p.task for p in others],
                [p.forgetting for p in others],
                color=colour,
                marker=marker,
                alpha=0.35,
                zorder=2,
            )
            beyond = [p for p in runs if floor is not None and p.task < floor]
            axis.scatter(
                [floor] * len(beyond),
                [p.forgetting for p in beyond],
                s=140,
                facecolors="none",
                edgecolors=colour,
                zorder=4,
            )
        axis.set_xscale("log")
        axis.invert_xaxis()
        if measure == "kl":  # KL spans decades and is 0 at the base: logarithmic above 1e-4, linear below
            axis.set_yscale("symlog", linthresh=1e-4)
        axis.set_ylim(bottom=0)
        edge = f"\nringed: runs past {floor:.0e}, drawn at the edge" if floor is not None else ""
        axis.set_xlabel(
            f"held-out {task_axis_name(rows)}{' per token' if task_axis_name(rows) == 'answer NLL' else ''}"
            f" (log scale; more learned →){edge}"
        )
        axis.set_ylabel(FORGETTING_MEASURES[measure][0])
        axis.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)


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
