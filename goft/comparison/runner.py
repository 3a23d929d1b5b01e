"""Runs a comparison, methods side by side on one recipe (SFT or DPO) with a matched budget, optionally over a
learning-rate grid per method (`compare`): every run trains through the stage's recipe with the same model, data,
split, seed, batch and steps (only the method's own keys and its learning rate differ), then is evaluated on one base
model loaded once (`goft.evaluation.runner.Evaluator`). A run that finished before with the same settings is reused,
and so is its evaluation when the evaluation sets and the adapter are unchanged (`evaluation_key`); the same
comparison started again continues where it stopped. The report is rewritten after every run, so a long sweep shows
its progress.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from goft.comparison.arguments import CompareArguments, shared_recipe
from goft.comparison.estimate import TIMINGS_FILE, estimated_run_seconds, format_minutes
from goft.comparison.launch import check_run_folders, recorded_spec_matches, run_spec, train
from goft.comparison.plan import Run, plan_runs
from goft.comparison.report import RESULTS_FILE, continues_comparison, write_report
from goft.data.loading import mixture_locations
from goft.evaluation import drift, knowledge
from goft.evaluation.runner import BaseReference, EvaluationSets, Evaluator, held_out_split
from goft.io.formats import write_json
from goft.io.model_source import ADAPTER_WEIGHTS_FILE, resolve_model_source
from goft.io.outputs import (
    FINISHED_MARKER,
    check_output_location,
    hold_output_lock,
    read_run_record,
    refuse_finished_output,
)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def evaluation_key(run: Run, sets: EvaluationSets) -> str:
    """What an evaluation depends on: the adapter's weights and the evaluation sets and settings."""
    parts = {
        "adapter": _file_digest(run.output_dir / ADAPTER_WEIGHTS_FILE),
        "answer_tokens": [knowledge.ANSWER_TOKENS, drift.ANSWER_TOKENS],
        "general_text": _file_digest(sets.general_text),
        "questions": _file_digest(sets.retention_questions),
        "instructions": _file_digest(sets.open_instructions),
        "task_samples": sets.task_samples,
        "max_length": sets.max_length,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _training_record(run: Run) -> dict:
    return (read_run_record(run.output_dir) or {}).get("metrics", {})


class Comparison:
    """The runs of one comparison, trained and evaluated one after another, the report rewritten after each."""

    def __init__(
        self,
        args: CompareArguments,
        script: Path,
        runs: list[Run],
        plan_source,
        reference,
        reported: list[Run] | None = None,
    ):
        self.args, self.script, self.runs = args, script, runs
        self.reported = runs if reported is None else reported  # every run of the config, in its order
        self.sets = args.evaluation_sets()
        self.folder = Path(args.output_dir)
        self.source, self.reference = plan_source, reference
        self.evaluator: Evaluator | None = None
        self.timings_path = self.folder / TIMINGS_FILE
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}

    def cached_evaluation(self, run: Run, key: str) -> dict | None:
        path = self.folder / "evaluations" / f"{run.output_dir.name}.json"
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return stored["result"]
        return None

    def evaluate(self, run: Run) -> dict:
        key = evaluation_key(run, self.sets)
        cached = self.cached_evaluation(run, key)
        if cached is not None:
            return cached
        if self.evaluator is None:
            self.evaluator = Evaluator(self.source, self.sets, self.reference)
        print(f"[compare] evaluating {run.name}", flush=True)
        test = held_out_split(run.output_dir) if self.sets.task_samples > 0 else None
        result = self.evaluator.evaluate(run.output_dir, test)
        path = self.folder / "evaluations" / f"{run.output_dir.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"key": key, "result": result})
        return result

    def row(self, run: Run, result: dict) -> dict:
        training = _training_record(run)
        return {
            "name": run.name,
            "group": run.group,
            "learning_rate": run.learning_rate,
            "seed": run.seed,
            "overrides": run.overrides,
            "wall_seconds": self.timings.get(run.name),
            "train_runtime": training.get("train_runtime"),
            "train_loss": training.get("train_loss"),
            "steps": training.get("global_step"),
            **result,
        }

    def finished_result(self, run: Run) -> dict | None:
        """A run outside this invocation (`only`) that finished with this comparison's settings and was evaluated
        on these sets: its stored evaluation, for the report."""
        if not (run.output_dir / FINISHED_MARKER).is_file() or not recorded_spec_matches(run, self.args):
            return None
        return self.cached_evaluation(run, evaluation_key(run, self.sets))

    def run_all(self) -> list[dict]:
        """Train and evaluate `runs`; the report after each covers them and every other finished run of the
        comparison (so `only` adds to the report rather than replacing it). Returns the rows of `runs`."""
        by_name = {}
        for run in self.reported:
            result = None if run in self.runs else self.finished_result(run)
            if result is not None:
                by_name[run.name] = self.row(run, result)
        rows = []
        for index, run in enumerate(self.runs, start=1):
            start = time.perf_counter()
            trained = train(run, self.script, self.args, run_spec(run, self.args))
            result = self.evaluate(run)
            if trained is not None:  # training and evaluation: what the estimate of the next runs uses
                self.timings[run.name] = time.perf_counter() - start
                write_json(self.timings_path, self.timings)
            rows.append(self.row(run, result))
            by_name[run.name] = rows[-1]
            write_report([by_name[r.name] for r in self.reported if r.name in by_name], self.args)
            left = [r for r in self.runs[index:] if not (r.output_dir / FINISHED_MARKER).is_file()]
            if left:
                seconds, _ = estimated_run_seconds(self.args, self.timings)
                print(
                    f"[compare] {index}/{len(self.runs)} done; {len(left)} to train, about "
                    f"{format_minutes(seconds * len(left))} left",
                    flush=True,
                )
        return rows


def compare(args: CompareArguments, scripts: dict[str, Path], parsers: dict) -> list[dict]:
    """Train every run (matched budget) with the stage's recipe script (`scripts[stage]`, its arguments checked by
    `parsers[stage]`), evaluate each on the same base, write the report; returns the rows."""
    runs = plan_runs(args, parsers.get(args.stage))
    refuse_finished_output(
        args.output_dir,
        RESULTS_FILE,
        "another comparison",
        overwrite=args.overwrite_output_dir or args.plan_only or continues_comparison(args),
    )
    check_run_folders(runs, args)
    sets = args.evaluation_sets()
    reference = BaseReference.load(sets)  # the evaluation sets are checked before anything trains
    to_train = [run for run in runs if not (run.output_dir / FINISHED_MARKER).is_file()]
    folder = Path(args.output_dir)
    timings = json.loads((folder / TIMINGS_FILE).read_text()) if (folder / TIMINGS_FILE).is_file() else {}
    seconds, how = estimated_run_seconds(args, timings) if to_train else (0.0, "nothing to train")
    print(
        f"[compare] {len(runs)} runs planned: {len(runs) - len(to_train)} finished (reused), {len(to_train)} to "
        f"train and evaluate; about {format_minutes(seconds * len(to_train))} ({how})",
        flush=True,
    )
    for run in runs:
        state = "to train" if run in to_train else "finished: reused"
        print(f"[compare]   {run.name}: {' '.join(run.flags())} ({state})", flush=True)
    if args.plan_only:
        return []
    recipe = shared_recipe(args)
    source = resolve_model_source(recipe.get("model_name_or_path"), recipe.get("gguf_file"))
    check_output_location(
        args.output_dir,
        {
            "recipe": args.recipe,
            "model folder": source.path,
            "dataset": recipe.get("dataset_name"),
            **mixture_locations(recipe.get("dataset_mixture"), recipe.get("datasets"), recipe.get("dataset_mixer")),
        },
    )
    hold_output_lock(args.output_dir, "comparison")
    reported = runs if args.only is None else plan_runs(dataclasses.replace(args, only=None), parsers.get(args.stage))
    return Comparison(args, scripts[args.stage], runs, source, reference, reported).run_all()
