"""The plot of a learning-rate sweep: forgetting (y) against the held-out task level (x, log scale, more learned to
the right), one panel per forgetting measure. A method swept with one seed is a curve through its Pareto frontier
from the base; with several seeds, the mean over seeds with its 95% interval as a band, both read from the sweep's
summary (`sweep.sweep_summary`). Every run is a dot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from goft.evaluation.frontier import Point, pareto_frontier
from goft.evaluation.sweep import FORGETTING_MEASURES, method_curves, task_axis_name

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


def _draw_method(axis, curves: dict, band: dict | None, floor, colour, marker, label) -> None:
    runs = [p for points, _ in curves.values() for p in points]
    if len(curves) > 1 and band and band["levels"]:
        levels = [max(level, floor) if floor is not None else level for level in band["levels"]]
        axis.plot(levels, band["mean"], color=colour, label=f"{label} (mean of {len(curves)} seeds)", zorder=3)
        if band["low"][0] is not None:
            axis.fill_between(levels, band["low"], band["high"], color=colour, alpha=0.2, linewidth=0, zorder=1)
        shown = []
    else:
        points, base = next(iter(curves.values()))
        shown = sorted(pareto_frontier(points) + [base], key=lambda p: -p.task)
        axis.plot(
            [p.task for p in at_floor(shown, floor)],
            [p.forgetting for p in shown],
            color=colour,
            marker=marker,
            label=label,
            zorder=3,
        )
    others = at_floor([p for p in runs if p not in shown], floor)
    axis.scatter([p.task for p in others], [p.forgetting for p in others], color=colour, marker=marker, alpha=0.35)
    beyond = [p for p in runs if floor is not None and p.task < floor]
    axis.scatter([floor] * len(beyond), [p.forgetting for p in beyond], s=140, facecolors="none", edgecolors=colour)


def plot_sweep(rows: list[dict], summary: dict, path: Path, title: str, task_levels) -> None:
    """Draw the sweep of `rows` (its `summary` gives the bands) to `path`. Runs more than two decades past the
    smallest of `task_levels` are drawn at the axis' edge as hollow markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = [m for m in FORGETTING_MEASURES if method_curves(rows, FORGETTING_MEASURES[m][1])]
    if not measures:
        return
    figure, axes = plt.subplots(1, len(measures), figsize=(6.5 * len(measures), 4.8), dpi=120, squeeze=False)
    markers = "osD^v<>pPX*h"
    groups = max(len(method_curves(rows, FORGETTING_MEASURES[m][1])) for m in measures)
    colours = [f"C{i}" for i in range(10)] if groups <= 10 else list(plt.get_cmap("tab20").colors)  # one per method
    axis_name = task_axis_name(rows)
    for axis, measure in zip(axes[0], measures):
        by_method = method_curves(rows, FORGETTING_MEASURES[measure][1])
        floor = axis_floor([p for curves in by_method.values() for ps, _ in curves.values() for p in ps], task_levels)
        bands = {group: method["band"] for group, method in summary.get(measure, {}).get("methods", {}).items()}
        for index, (group, curves) in enumerate(by_method.items()):
            colour, marker = colours[index % len(colours)], markers[index % len(markers)]
            _draw_method(axis, curves, bands.get(group), floor, colour, marker, group)
        axis.set_xscale("log")
        axis.invert_xaxis()
        if measure == "kl":  # KL spans decades and is 0 at the base: logarithmic above 1e-4, linear below
            axis.set_yscale("symlog", linthresh=1e-4)
        if measure != "loss_rise":  # a tuned model may fit general text better than its base: the rise can be < 0
            axis.set_ylim(bottom=0)
        edge = f"\nringed: runs past {floor:.0e}, drawn at the edge" if floor is not None else ""
        axis.set_xlabel(
            f"held-out {axis_name}{' per token' if axis_name == 'answer NLL' else ''} (log scale; more learned →){edge}"
        )
        axis.set_ylabel(FORGETTING_MEASURES[measure][0])
        axis.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
