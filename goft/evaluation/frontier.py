"""Task gain against forgetting across a learning-rate sweep: each method's Pareto frontier, and its forgetting
interpolated at task levels (held-out answer NLL per token) so that methods are compared at equal task gain.

Both coordinates are "lower is better": the task level is the held-out answers' NLL per token, the forgetting is
any measure that is 0 for the base (KL on general text, the share of retention questions lost, ...). The base itself
is the untrained end of every method's curve, at (base NLL, 0 forgetting)."""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    task: float  # held-out answer NLL per token: lower means more learned
    forgetting: float  # 0 for the base: lower means more kept
    label: str = ""


def pareto_frontier(points: list[Point]) -> list[Point]:
    """The points no other point beats on both coordinates (another point with task ≤ and forgetting ≤, one of them
    strictly), sorted from most learned (lowest task level) to least. Points with a NaN coordinate are left out."""
    finite = [p for p in points if not (math.isnan(p.task) or math.isnan(p.forgetting))]
    frontier = []
    for point in sorted(finite, key=lambda p: (p.task, p.forgetting)):
        if frontier and frontier[-1].forgetting <= point.forgetting:
            continue  # an earlier point learned at least as much with no more forgetting
        frontier.append(point)
    return frontier


def forgetting_at(frontier: list[Point], level: float, base: Point | None = None) -> float | None:
    """Forgetting at task level `level`, linear in log(task level) between the two frontier points around it; with
    `base`, between the least-trained point and the base too. None when no point reaches the level (it would be an
    extrapolation beyond the most trained run)."""
    curve = sorted(frontier + ([base] if base is not None else []), key=lambda p: p.task)
    curve = pareto_frontier(curve)
    if not curve or level < curve[0].task or level <= 0:
        return None
    if level >= curve[-1].task:
        return curve[-1].forgetting
    for low, high in zip(curve, curve[1:]):
        if low.task <= level <= high.task:
            if high.task == low.task:
                return low.forgetting
            # t = (log L − log x_low) / (log x_high − log x_low); f = f_low + t · (f_high − f_low)
            t = (math.log(level) - math.log(low.task)) / (math.log(high.task) - math.log(low.task))
            return low.forgetting + t * (high.forgetting - low.forgetting)
    return None


def common_levels(frontiers: dict[str, list[Point]], levels: list[float]) -> list[float]:
    """The task levels that every method's frontier reaches."""
    return [
        level
        for level in levels
        if all(points and min(p.task for p in points) <= level for points in frontiers.values())
    ]
