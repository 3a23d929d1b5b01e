"""Training one run of a comparison: the stage's recipe script started in its own process with the shared recipe and
the method's flags, its log under `output_dir/logs`; what it was trained with recorded in its folder
(`RUN_SPEC_FILE`), so that a finished run is reused and an interrupted one resumed only when that record matches,
and a folder made with other settings is refused before anything trains; the base's replay answers shared between runs.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

from goft.comparison.arguments import CompareArguments, shared_recipe
from goft.comparison.plan import Run, as_flags
from goft.errors import RecipeError
from goft.io.formats import write_json
from goft.io.outputs import FINISHED_MARKER
from goft.training.trainers.replay import REPLAY_FILE

logger = logging.getLogger(__name__)

RUN_SPEC_FILE = "compare_run.json"  # in each run's folder: what it was trained with, checked before it is reused


def run_spec(run: Run, args: CompareArguments) -> dict:
    """What a run is trained with: the stage, the recipe's keys (parsed, so comments do not count) and the method's
    flags. A run folder is reused only when its recorded spec is this one."""
    recipe = {k: v for k, v in shared_recipe(args).items() if k != "output_dir"}  # each run gets its own folder
    return {"stage": args.stage, "recipe": recipe, "flags": run.flags()}


def recorded_spec_matches(run: Run, args: CompareArguments) -> bool:
    """Whether `run`'s folder records that it was trained with this comparison's settings for it."""
    try:
        return json.loads((run.output_dir / RUN_SPEC_FILE).read_text()) == json.loads(json.dumps(run_spec(run, args)))
    except (OSError, json.JSONDecodeError):
        return False


def check_run_folders(runs: list[Run], args: CompareArguments) -> None:
    """Refuse, before anything trains, to reuse or resume a run folder made with other settings (or not by a
    comparison at all): its adapter would be reported under a name it was not trained with."""
    for run in runs:
        if not run.output_dir.exists():
            continue
        spec_file = run.output_dir / RUN_SPEC_FILE
        if not spec_file.is_file():
            raise RecipeError(
                f"{run.name}: {run.output_dir} exists but was not made by a comparison (it has no "
                f"{RUN_SPEC_FILE}); move it away or choose another `output_dir`."
            )
        try:
            recorded = json.loads(spec_file.read_text())
        except json.JSONDecodeError:
            raise RecipeError(
                f"{spec_file} is not valid JSON; remove {run.output_dir} to train {run.name} again."
            ) from None
        expected = run_spec(run, args)
        changed = [key for key in expected if recorded.get(key) != expected[key]]
        if changed:
            what = {"stage": "the stage", "recipe": f"the recipe's keys ({args.recipe})", "flags": "the method's keys"}
            raise RecipeError(
                f"{run.name}: {run.output_dir} was trained with other settings ("
                f"{', '.join(what[k] for k in changed)} changed: recorded flags "
                f"{' '.join(recorded.get('flags', []))!r}). Give the changed method a new name, or "
                f"remove that folder to train it again."
            )


def train(run: Run, script: Path, args: CompareArguments, spec: dict) -> float | None:
    """Train one run with the stage's recipe script in its own process, its `spec` recorded in its folder; a
    finished run is reused (None). Returns seconds."""
    if (run.output_dir / FINISHED_MARKER).is_file():
        logger.warning("%s: reusing the finished run in %s", run.name, run.output_dir)
        return None
    log_file = run.output_dir.parent.parent / "logs" / f"{run.output_dir.name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    run.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(run.output_dir / RUN_SPEC_FILE, spec)
    share_base_answers(run)
    # the comparison evaluates every run itself, on one base: the recipe's own before/after measures are skipped
    command = [
        sys.executable,
        str(script),
        "--config",
        args.recipe,
        "--output_dir",
        str(run.output_dir),
        "--task_eval_samples",
        "0",
        "--retention_eval",
        "false",
        *as_flags(args.recipe_changes),
        *run.flags(),
    ]
    print(f"[compare] training {run.name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    with open(log_file, "a") as log:  # a resumed run appends to the log of its interrupted start
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if finished.returncode != 0:
        tail = log_file.read_text().strip().splitlines()[-5:]
        raise RecipeError(
            f"Training {run.name!r} failed (exit {finished.returncode}); see {log_file}:\n  " + "\n  ".join(tail)
        )
    return time.perf_counter() - start


def share_base_answers(run: Run) -> None:
    """Give a run the base's answers to the replay prompts that an earlier run of this comparison generated, so the
    base answers them once per comparison rather than once per run. The file is keyed by the base, the prompts and
    the answer length: a run whose settings differ regenerates them, as it would without the copy."""
    target = run.output_dir / REPLAY_FILE
    if target.exists():
        return
    earlier = sorted(run.output_dir.parent.glob(f"*/{REPLAY_FILE}"))
    if earlier:
        shutil.copyfile(earlier[0], target)
