"""Methods side by side on one recipe (SFT or DPO) with a matched budget, optionally over a learning-rate grid per
method.

Every run trains through the stage's recipe with the same model, data, split, seed, batch and steps (only the
method's own keys and its learning rate differ), then is evaluated on one base model loaded once
(`runner.Evaluator`). A run that finished before with the same settings is reused, and so is its evaluation when the
evaluation sets and the adapter are unchanged; the same comparison started again continues where it stopped. The
report (table, sweep frontiers, JSON and plot) is rewritten after every run, so a long sweep shows its progress.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from goft.data.loading import mixture_locations
from goft.data.stages import STAGES
from goft.errors import RecipeError
from goft.evaluation import assets, drift, knowledge
from goft.evaluation.report import TASK_LEVELS, plot_sweep, render_sweep, render_table, sweep_summary, task_axis_name
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
from goft.training.arguments.recipe_file import check_recipe_values, load_recipe_file
from goft.training.trainers.replay import REPLAY_FILE

logger = logging.getLogger(__name__)

RESULTS_FILE = "comparison.json"
TABLE_FILE = "comparison.md"
PLOT_FILE = "comparison.png"
TIMINGS_FILE = "timings.json"
RUN_SPEC_FILE = "compare_run.json"  # in each run's folder: what it was trained with, checked before it is reused
# What makes the budget matched: a method may not change these.
MATCHED_KEYS = (
    "model_name_or_path",
    "gguf_file",
    "dtype",
    "dataset_name",
    "dataset_mixture",
    "datasets",
    "test_split_size",
    "dataset_test_size",
    "seed",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "output_dir",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "beta",
)
STEP_EFFICIENCY = 0.5  # share of the measured matmul speed a training step reaches (first guess, before timings)


@dataclass
class CompareArguments:
    """`python recipes/compare.py --config recipes/configs/smollm2/compare.yaml [--only givens lora]`"""

    recipe: str = field(metadata={"help": "The recipe every method trains with (model, data, budget): a YAML file."})
    stage: str = field(default="sft", metadata={"help": "The recipe's stage: sft or dpo.", "choices": list(STAGES)})
    recipe_changes: dict = field(
        default_factory=dict,
        metadata={
            "help": "Recipe keys changed for every method alike, e.g. `lr_scheduler_type: cosine` to compare methods "
            "under another schedule; the budget stays matched (each method still may not change it)."
        },
    )
    methods: dict = field(
        default_factory=dict,
        metadata={
            "help": "Method name -> the recipe keys it changes (`adapter`, its hyper-parameters, `learning_rate`). "
            "A list of learning rates sweeps them: one run per value."
        },
    )
    only: list[str] | None = field(default=None, metadata={"help": "Run just these methods from `methods`."})
    output_dir: str = field(default="runs/smollm2-compare", metadata={"help": "Runs, logs and the report go here."})
    general_text: str = field(
        default=str(assets.GENERAL_TEXT),
        metadata={"help": "JSONL with a `text` column: the forgetting set, never trained on."},
    )
    retention_questions: str = field(
        default=str(assets.RETENTION_QUESTIONS),
        metadata={"help": "JSONL of general-knowledge questions (the retention set)."},
    )
    open_instructions: str = field(
        default=str(assets.OPEN_INSTRUCTIONS), metadata={"help": "JSONL of open instructions (drift of the answers)."}
    )
    task_eval_samples: int = field(default=40, metadata={"help": "Held-out examples for the task metric."})
    max_length: int = field(default=256, metadata={"help": "Tokens per general-text paragraph in evaluation."})
    task_levels: list[float] = field(
        default_factory=lambda: list(TASK_LEVELS),
        metadata={
            "help": "Task levels at which each method's forgetting is interpolated: held-out answer NLL per token "
            "(SFT) or preference loss, −log σ(reward margin) (DPO; log 2 = 0.693 at the base)."
        },
    )
    plan_only: bool = field(default=False, metadata={"help": "Print the planned runs and the time estimate; stop."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier report in output_dir."})

    def evaluation_sets(self) -> EvaluationSets:
        return EvaluationSets(
            general_text=self.general_text,
            retention_questions=self.retention_questions,
            open_instructions=self.open_instructions,
            task_samples=self.task_eval_samples,
            max_length=self.max_length,
        )


@dataclass(frozen=True)
class Run:
    name: str  # the method's name, with "@lr=<value>" when the method sweeps learning rates
    group: str  # the method's name
    overrides: dict
    output_dir: Path

    def flags(self) -> list[str]:
        return as_flags(self.overrides)

    @property
    def learning_rate(self):
        return self.overrides.get("learning_rate")


def _flag_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def as_flags(keys: dict) -> list[str]:
    """Recipe keys as command-line flags (`--key value`, a list as several values)."""
    flags = []
    for key, value in keys.items():
        values = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *(_flag_value(v) for v in values)]
    return flags


def check_recipe_changes(args: CompareArguments) -> None:
    if not isinstance(args.recipe_changes, dict):
        raise RecipeError(f"`recipe_changes` must map recipe keys to values, got {args.recipe_changes!r}.")
    if "output_dir" in args.recipe_changes:
        raise RecipeError(
            "`recipe_changes` may not set `output_dir`: every run gets its own folder under the "
            "comparison's `output_dir`."
        )


def _method_runs(name: str, overrides: dict, root: Path) -> list[Run]:
    rates = overrides.get("learning_rate")
    if not isinstance(rates, list):
        return [Run(name, name, overrides, root / name)]
    if not rates or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in rates):
        raise RecipeError(
            f"Method {name!r}: `learning_rate` must be a positive number or a non-empty list of them, got {rates!r}."
        )
    if len(set(rates)) != len(rates):
        raise RecipeError(f"Method {name!r}: `learning_rate` lists a value twice ({rates}).")
    return [
        Run(f"{name}@lr={rate:g}", name, {**overrides, "learning_rate": rate}, root / f"{name}-lr{rate:g}")
        for rate in rates
    ]


def plan_runs(args: CompareArguments, parser) -> list[Run]:
    """The runs to make, each checked by parsing its full recipe with the stage's `parser`; refuses bad input before
    any training."""
    if args.stage not in STAGES:
        raise RecipeError(f"`stage` must be one of {', '.join(STAGES)}, got {args.stage!r}.")
    if not Path(args.recipe).is_file():
        raise RecipeError(f"The recipe {args.recipe!r} does not exist.")
    # the shared recipe file as the recipes read it: no repeated key, values of their keys' types
    check_recipe_values(load_recipe_file(args.recipe), parser, args.recipe)
    if not args.methods:
        raise RecipeError("`methods` is empty: give each method's recipe keys, e.g. `lora: {adapter: lora}`.")
    check_recipe_changes(args)
    if args.recipe_changes:
        try:  # a bad shared key is named as such, not as a fault of the first method
            parser.parse_args_and_config(args=["--config", args.recipe, *as_flags(args.recipe_changes)])
        except (ValueError, SystemExit) as error:
            raise RecipeError(
                f"`recipe_changes` do not parse ({error}; see the message above for a bad choice)."
            ) from None
    names = list(args.methods) if args.only is None else list(args.only)
    unknown = [n for n in names if n not in args.methods]
    if unknown:
        raise RecipeError(f"`only` names {unknown}, which `methods` does not define ({', '.join(args.methods)}).")
    for label, path in (
        ("general-text", args.general_text),
        ("retention question", args.retention_questions),
        ("open-instruction", args.open_instructions),
    ):
        if not Path(path).is_file():
            raise RecipeError(f"The {label} file {path!r} does not exist.")
    if not args.task_levels or any(not level > 0 for level in args.task_levels):
        raise RecipeError(
            "`task_levels` must be positive task levels (answer NLL per token, or preference loss for "
            f"DPO), got {args.task_levels}."
        )
    runs = []
    for name in names:
        overrides = args.methods[name] or {}
        if not isinstance(overrides, dict):
            raise RecipeError(f"Method {name!r} must map recipe keys to values, got {overrides!r}.")
        fixed = [k for k in overrides if k in MATCHED_KEYS]
        if fixed:
            raise RecipeError(
                f"Method {name!r} changes {fixed}: those keys are the matched budget, the same for "
                "every method (set them in the recipe or in `recipe_changes`)."
            )
        shared = [k for k in overrides if k in args.recipe_changes]
        if shared:
            raise RecipeError(f"Method {name!r} sets {shared}, which `recipe_changes` already sets for every method.")
        for run in _method_runs(name, overrides, Path(args.output_dir) / "runs"):
            try:  # unknown keys and bad values fail here, for every run, before anything trains
                parser.parse_args_and_config(
                    args=["--config", args.recipe, *as_flags(args.recipe_changes), *run.flags()]
                )
            except (ValueError, SystemExit) as error:
                raise RecipeError(f"Method {name!r}: its recipe keys do not parse ({error}).") from None
            runs.append(run)
    return runs


# ---- how long it will take ----------------------------------------------------------------------------------------


def matmul_flops_per_second(seconds: float = 0.3, size: int = 512) -> float:
    """This machine's float32 matmul speed, measured on the threads torch uses."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


def _recipe(args: CompareArguments) -> dict:
    """The recipe every run trains with: its file, with the comparison's `recipe_changes` applied."""
    return {**load_recipe_file(args.recipe), **args.recipe_changes}


def _model_parameters(recipe: dict) -> int:
    from goft.io.adapter_checks import build_skeleton, load_model_config

    source = resolve_model_source(recipe.get("model_name_or_path"), recipe.get("gguf_file"))
    skeleton = build_skeleton(load_model_config(source), source)
    return sum(p.numel() for p in skeleton.parameters())


def estimated_run_seconds(args: CompareArguments, timings: dict) -> tuple[float, str]:
    """(seconds per run, how it was estimated): the median of this comparison's finished runs when there are any,
    else from the model's size, the recipe's steps and tokens, and this machine's measured matmul speed."""
    measured = sorted(timings.values())
    if measured:
        return measured[len(measured) // 2], f"median of {len(measured)} runs timed here"
    recipe = _recipe(args)
    tokens = (
        recipe.get("per_device_train_batch_size", 8)
        * recipe.get("gradient_accumulation_steps", 1)
        * recipe.get("max_length", 1024)
    )
    steps = recipe.get("max_steps", 0)
    if not steps or steps < 0:
        return float("nan"), "unknown: the recipe sets no max_steps"
    # a step with frozen weights: forward 2·N·T and backward (input gradients only) 2·N·T multiply-adds
    flops = 4 * _model_parameters(recipe) * tokens * steps
    rate = matmul_flops_per_second() * STEP_EFFICIENCY
    evaluation = 0.5 * flops / steps * 10  # evaluation: about the work of ten training steps (a first guess)
    return (flops + evaluation) / rate + 30.0, "first guess from model size, steps and this machine's matmul speed"


def _minutes(seconds: float) -> str:
    return "?" if math.isnan(seconds) else f"{seconds / 60:.0f} min"


# ---- training and evaluating one run ------------------------------------------------------------------------------


def run_spec(run: Run, args: CompareArguments) -> dict:
    """What a run is trained with: the stage, the recipe's keys (parsed, so comments do not count) and the method's
    flags. A run folder is reused only when its recorded spec is this one."""
    recipe = {k: v for k, v in _recipe(args).items() if k != "output_dir"}  # each run gets its own folder
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
                    f"{_minutes(seconds * len(left))} left",
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
        f"train and evaluate; about {_minutes(seconds * len(to_train))} ({how})",
        flush=True,
    )
    for run in runs:
        state = "to train" if run in to_train else "finished: reused"
        print(f"[compare]   {run.name}: {' '.join(run.flags())} ({state})", flush=True)
    if args.plan_only:
        return []
    recipe = _recipe(args)
    source = resolve_model_source(recipe.get("model_name_or_path"), recipe.get("gguf_file"))
    check_output_location(
        args.output_dir,
        {
            "recipe": args.recipe,
            "model folder": source.path,
            "dataset": recipe.get("dataset_name"),
            **mixture_locations(recipe.get("dataset_mixture"), recipe.get("datasets")),
        },
    )
    hold_output_lock(args.output_dir, "comparison")
    reported = runs if args.only is None else plan_runs(dataclasses.replace(args, only=None), parsers.get(args.stage))
    return Comparison(args, scripts[args.stage], runs, source, reference, reported).run_all()


# ---- the report ---------------------------------------------------------------------------------------------------


def report_settings(args: CompareArguments) -> dict:
    recipe = _recipe(args)
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
    plot_sweep(rows, folder / PLOT_FILE, title, args.task_levels)
