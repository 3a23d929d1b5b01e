"""What a learning-rate sweep says, over seeds: each method's Pareto frontier per seed, its forgetting at equal task
levels averaged over seeds with a 95% Student-t interval, a bootstrap over the retention questions for the share
lost, the band the plot draws, and every pair of methods compared seed by seed ("lower", "higher" or "level").

A row is one evaluated run (`goft.comparison`): its `group` (the method), its `seed` (None for a sweep of one seed),
its task level (held-out answer NLL per token for SFT, preference loss for DPO, both lower when more is learned) and
its forgetting measures (each 0 for the base). The frontier of one seed is interpolated from that seed's base
(`goft.evaluation.frontier`); a level counts for a method only where every seed of it reaches the level.
"""

from __future__ import annotations

import math
import random

from goft.evaluation.frontier import Point, common_levels, forgetting_at, pareto_frontier
from goft.evaluation.intervals import mean_interval, paired_difference, percentile_interval
from goft.evaluation.report import number
from goft.io.formats import markdown_table

# the task level of a run, lower is better: (row["task"] key of the tuned model, of the base, how it reads)
TASK_AXES = {
    "exact_match": ("answer_nll_tuned", "answer_nll_base", "answer NLL"),
    "preference": ("preference_loss_tuned", "preference_loss_base", "preference loss"),
}


def _lost_share(row: dict) -> float | None:
    knowledge = row.get("knowledge") or {}
    return 1.0 - knowledge["retention"] if knowledge.get("known_to_base") else None


def _loss_rise(row: dict) -> float | None:
    if not row.get("perplexity_base") or not row.get("perplexity_tuned"):
        return None
    return math.log(row["perplexity_tuned"]) - math.log(row["perplexity_base"])  # mean NLL/token, tuned − base


FORGETTING_MEASURES = {  # name -> (how it reads in a table, function of a row; None when not measured)
    "kl": ("KL(base‖tuned)/token on general text", lambda row: row.get("kl_base_tuned")),
    "lost": ("retention questions lost", _lost_share),
    "loss_rise": ("rise of loss/token on general text", _loss_rise),
}
BOOTSTRAP_SAMPLES = 1000  # resamples of the retention questions (seeded: the report is the same at every rewrite)
BAND_POINTS = 24  # task levels at which the plot's band is evaluated


def task_levels_of(row: dict) -> tuple[float | None, float | None]:
    """(tuned, base) task level of a row: held-out answer NLL per token (SFT) or preference loss (DPO)."""
    task = row.get("task") or {}
    tuned, base, _ = TASK_AXES.get(task.get("task"), (None, None, None))
    return task.get(tuned), task.get(base)


def task_axis_name(rows: list[dict]) -> str:
    """How the rows' task level reads ("answer NLL", "preference loss")."""
    kinds = {(row.get("task") or {}).get("task") for row in rows} & set(TASK_AXES)
    return TASK_AXES[kinds.pop()][2] if len(kinds) == 1 else "task level"


def group_of(row: dict) -> str:
    return row.get("group", row.get("name", row.get("adapter")))


def method_curves(rows: list[dict], forgetting) -> dict[str, dict]:
    """Per method, per seed: (its runs as (task level, forgetting) points, the base's point). `forgetting(row)`
    gives a row's forgetting, None when it was not measured."""
    curves: dict[str, dict] = {}
    for row in rows:
        (level, base), value = task_levels_of(row), forgetting(row)
        if level is None or base is None or value is None:
            continue
        points, _ = curves.setdefault(group_of(row), {}).setdefault(row.get("seed"), ([], None))
        points.append(Point(level, value, row.get("name", "")))
        curves[group_of(row)][row.get("seed")] = (points, Point(base, 0.0, "base"))
    return curves


def _at_level(curves: dict, level: float) -> dict:
    """Per seed, the forgetting at `level` (None where that seed's most trained run does not reach it)."""
    return {seed: forgetting_at(pareto_frontier(points), level, base) for seed, (points, base) in curves.items()}


def _reached(per_seed: dict) -> bool:
    return bool(per_seed) and all(value is not None for value in per_seed.values())


def _band(curves: dict) -> dict:
    """Mean and interval over seeds at `BAND_POINTS` task levels, log-spaced from the base to the most trained
    level every seed reaches; empty when the seeds share no stretch."""
    top = min(base.task for _, base in curves.values())
    bottom = max(min(p.task for p in pareto_frontier(points)) for points, _ in curves.values())
    if not (0 < bottom < top):
        return {"levels": [], "mean": [], "low": [], "high": []}
    step = (math.log(top) - math.log(bottom)) / (BAND_POINTS - 1)
    levels = [top, *(math.exp(math.log(top) - i * step) for i in range(1, BAND_POINTS - 1)), bottom]
    intervals = [mean_interval(list(_at_level(curves, level).values())) for level in levels]
    return {
        "levels": levels,
        "mean": [i.mean for i in intervals],
        "low": [i.low for i in intervals],
        "high": [i.high for i in intervals],
    }


def _lost_bootstrap(rows: list[dict], levels, samples: int = BOOTSTRAP_SAMPLES) -> dict:
    """Per method and level, the 95% percentile interval of the seed-mean share lost when the base's known
    retention questions are resampled with replacement (the questions are a sample too). Empty unless every row
    was asked the same known set and lists the ids it lost."""
    usable = [r for r in rows if None not in task_levels_of(r) and _lost_share(r) is not None]
    if not usable or any("lost" not in r["knowledge"] for r in usable):
        return {}
    known = {r["knowledge"]["known_to_base"] for r in usable}
    lost_ids = sorted({str(i) for r in usable for i in r["knowledge"]["lost"]})
    if len(known) != 1 or len(lost_ids) > min(known):
        return {}
    n, position = known.pop(), {qid: k for k, qid in enumerate(lost_ids)}
    lost_of = [[position[str(i)] for i in r["knowledge"]["lost"]] for r in usable]
    generator = random.Random(0)
    draws: dict = {}
    for _ in range(samples):
        counts = [0] * n  # questions 0..len(lost_ids)−1 are those some run lost; the rest every run kept
        for _ in range(n):
            counts[generator.randrange(n)] += 1
        shares = {id(r): sum(counts[k] for k in ks) / n for r, ks in zip(usable, lost_of)}
        for group, curves in method_curves(usable, lambda row, shares=shares: shares[id(row)]).items():
            for level in levels:
                per_seed = _at_level(curves, level)
                if _reached(per_seed):
                    draws.setdefault(group, {}).setdefault(str(level), []).append(
                        sum(per_seed.values()) / len(per_seed)
                    )
    return {
        group: {level: list(percentile_interval(values)) for level, values in by_level.items()}
        for group, by_level in draws.items()
    }


def bracket(rows: list[dict], forgetting, level: float) -> dict:
    """Whether a method's learning-rate grid (the `rows` of one method and seed) is bracketed from below at `level`:
    the run that forgets least among those reaching the level should have a lower rate beside it. That lower rate
    either reaches the level too, forgetting more ("lower rate forgets more"), or does not within the budget's
    steps ("budget stops the lower rate"); with no lower rate the grid is "not bracketed": a still lower rate might
    forget less. "not reached" when no run reaches the level."""
    runs = [
        (row["learning_rate"], task, value)
        for row in rows
        if isinstance(row.get("learning_rate"), (int, float))
        and (task := task_levels_of(row)[0]) is not None
        and (value := forgetting(row)) is not None
    ]
    reaching = [run for run in runs if run[1] <= level]
    if not reaching:
        return {"reads": "not reached", "rate": None, "lower_rate": None}
    rate = min(reaching, key=lambda run: (run[2], run[0]))[0]
    lower = [run for run in runs if run[0] < rate]
    if not lower:
        return {"reads": "not bracketed", "rate": rate, "lower_rate": None}
    below = max(lower, key=lambda run: run[0])
    reads = "lower rate forgets more" if below[1] <= level else "budget stops the lower rate"
    return {"reads": reads, "rate": rate, "lower_rate": below[0]}


def _differences(per_method: dict, levels) -> dict:
    """Every pair of methods at every level both reach, paired by seed: the mean of (a − b) and its interval."""
    out = {}
    names = list(per_method)
    for level in map(str, levels):
        pairs = []
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                ours, theirs = per_method[a].get(level, {}), per_method[b].get(level, {})
                if not (_reached(ours) and _reached(theirs)):
                    continue
                difference = paired_difference(ours, theirs)
                if difference is not None:
                    pairs.append({"a": a, "b": b, **difference.as_dict(), "verdict": difference.verdict()})
        out[level] = pairs
    return out


def sweep_summary(rows: list[dict], levels) -> dict:
    """Per forgetting measure: each method's frontier per seed, its forgetting at `levels` (mean over seeds,
    95% interval, each seed's value), the plot's band, the levels every method reaches and every pair of methods
    compared at each level; for the share lost also a bootstrap interval over the retention questions."""
    summary = {}
    for measure, (_, forgetting) in FORGETTING_MEASURES.items():
        by_method = method_curves(rows, forgetting)
        if not by_method:
            continue
        bootstrap = _lost_bootstrap(rows, levels) if measure == "lost" else {}
        methods, per_method = {}, {}
        for group, curves in by_method.items():
            per_level = {str(level): _at_level(curves, level) for level in levels}
            per_method[group] = per_level
            intervals = {
                level: mean_interval(list(values.values())) if _reached(values) else None
                for level, values in per_level.items()
            }
            methods[group] = {
                "seeds": list(curves),
                "frontiers": {
                    str(seed): [
                        {"run": p.label, "task_level": p.task, "forgetting": p.forgetting}
                        for p in pareto_frontier(points)
                    ]
                    for seed, (points, _) in curves.items()
                },
                "at_level": {level: None if i is None else i.mean for level, i in intervals.items()},
                "interval": {
                    level: None if i is None or i.low is None else [i.low, i.high] for level, i in intervals.items()
                },
                "per_seed": {level: {str(s): v for s, v in values.items()} for level, values in per_level.items()},
                "band": _band(curves),
            }
            if group in bootstrap:
                methods[group]["bootstrap"] = bootstrap[group]
            by_seed = [[r for r in rows if group_of(r) == group and r.get("seed") == seed] for seed in curves]
            methods[group]["brackets"] = {
                str(level): {
                    str(seed): bracket(seed_rows, forgetting, level) for seed, seed_rows in zip(curves, by_seed)
                }
                for level in levels
            }
        frontiers = {
            group: [p for points, _ in curves.values() for p in pareto_frontier(points)]
            for group, curves in by_method.items()
        }
        reached = [
            level
            for level in common_levels(frontiers, list(levels))
            if all(_reached(per_method[group][str(level)]) for group in per_method)
        ]
        summary[measure] = {
            "common_levels": reached,
            "methods": methods,
            "differences": _differences(per_method, levels),
        }
    return summary


def _level_cell(method: dict, level: str) -> str:
    mean, interval = method["at_level"].get(level), method["interval"].get(level)
    if mean is None or interval is None:
        return number(mean)
    return f"{number(mean)} [{number(interval[0])}, {number(interval[1])}]"


def _frontier_cell(method: dict) -> str:
    def runs(frontier):
        return ", ".join(f"{p['run']} ({number(p['task_level'])}, {number(p['forgetting'])})" for p in frontier)

    if len(method["frontiers"]) == 1:
        return runs(next(iter(method["frontiers"].values())))
    return "; ".join(f"seed {seed}: {runs(frontier)}" for seed, frontier in method["frontiers"].items())


def render_sweep(summary: dict, levels, axis: str = "answer NLL") -> str:
    """Markdown: per forgetting measure, each method's forgetting at the task levels (mean over seeds and its 95%
    interval), its frontier runs, and the pairs of methods that differ at a level."""
    parts = []
    for measure, result in summary.items():
        title = FORGETTING_MEASURES[measure][0]
        header = [
            "method",
            "seeds",
            *(f"at {axis} {level:g}" for level in levels),
            f"frontier runs ({axis}, forgetting)",
        ]
        body = [
            [
                group,
                len(method["seeds"]),
                *(_level_cell(method, str(level)) for level in levels),
                _frontier_cell(method),
            ]
            for group, method in result["methods"].items()
        ]
        reached = ", ".join(f"{level:g}" for level in result["common_levels"]) or "none"
        text = (
            f"### Forgetting ({title}) at equal task level\n\nEvery method reaches {axis}: {reached}. "
            "Mean over seeds [95% t interval over seeds]; a dash: some seed's most trained run did not reach the "
            "level.\n\n" + markdown_table(header, body) + "\n"
        )
        for reads, sentence in (
            ("not bracketed", "Not bracketed from below (no lower rate was run; a lower one might forget less)"),
            ("budget stops the lower rate", "Bracketed by the budget (the next lower rate does not reach the level)"),
        ):
            found = [
                f"{group} at {float(level):g} (seed {', '.join(seeds)})"
                for group, method in result["methods"].items()
                for level, by_seed in method["brackets"].items()
                if (seeds := [seed for seed, b in by_seed.items() if b["reads"] == reads])
            ]
            if found:
                text += f"\n{sentence}: {'; '.join(found)}.\n"
        pairs = [
            [
                f"{float(level):g}",
                f"{p['a']} − {p['b']}",
                number(p["mean"]),
                f"[{number(p['low'])}, {number(p['high'])}]",
                p["n"],
                p["verdict"],
            ]
            for level, found in result["differences"].items()
            for p in found
            if p["low"] is not None
        ]
        if pairs:
            text += (
                '\nPairs compared seed by seed (a − b; "level" where the 95% interval holds 0):\n\n'
                + markdown_table([axis, "a − b", "mean", "95% interval", "seeds", "reads"], pairs)
                + "\n"
            )
        parts.append(text)
    return "\n".join(parts)
