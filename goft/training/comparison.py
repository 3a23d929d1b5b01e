"""Side-by-side comparison of adapter methods on one SFT recipe with a matched budget, and its report.

Every method trains through the SFT recipe with the same model, data, split, seed, batch and steps (only the
method's own keys and learning rate differ), then `retention.evaluate_adapters` measures task gain and forgetting.
The report is a Markdown table, the full results as JSON, and a plot of task gain against forgetting.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .checkpoints import FINISHED_MARKER
from .errors import RecipeError
from .retention import DEFAULT_GENERAL_TEXT, evaluate_adapters

logger = logging.getLogger(__name__)

RESULTS_FILE = "comparison.json"
TABLE_FILE = "comparison.md"
PLOT_FILE = "comparison.png"
# What makes the budget matched: a method may not change these.
MATCHED_KEYS = ("model_name_or_path", "gguf_file", "dtype", "dataset_name", "dataset_test_size", "seed", "max_steps",
                "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "max_length",
                "output_dir", "lr_scheduler_type", "warmup_steps", "warmup_ratio")


@dataclass
class CompareArguments:
    """`python recipes/compare.py --config recipes/configs/smollm2/compare.yaml [--only givens lora]`"""

    sft_config: str = field(default="recipes/configs/smollm2/sft_givens.yaml",
                            metadata={"help": "The SFT recipe every method trains with (model, data, budget)."})
    methods: dict = field(default_factory=dict, metadata={
        "help": "Method name -> the SFT recipe keys it changes (`adapter`, its hyper-parameters, `learning_rate`)."})
    only: list[str] | None = field(default=None, metadata={"help": "Run just these methods from `methods`."})
    output_dir: str = field(default="runs/smollm2-compare", metadata={"help": "Runs, logs and the report go here."})
    general_text: str = field(default=str(DEFAULT_GENERAL_TEXT),
                              metadata={"help": "JSONL with a `text` column: the forgetting set, never trained on."})
    task_eval_samples: int = field(default=40, metadata={"help": "Held-out examples for the task metric."})
    max_length: int = field(default=256, metadata={"help": "Tokens per general-text paragraph in evaluation."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier report in output_dir."})


@dataclass(frozen=True)
class MethodRun:
    name: str
    overrides: dict
    output_dir: Path

    def flags(self) -> list[str]:
        flags = []
        for key, value in self.overrides.items():
            values = value if isinstance(value, list) else [value]
            flags += [f"--{key}", *(_flag_value(v) for v in values)]
        return flags


def _flag_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def plan_runs(args: CompareArguments, sft_parser) -> list[MethodRun]:
    """The runs to make, each checked by parsing its full SFT recipe; refuses bad input before any training."""
    if not Path(args.sft_config).is_file():
        raise RecipeError(f"The SFT recipe {args.sft_config!r} does not exist.")
    if not args.methods:
        raise RecipeError("`methods` is empty: give each method's recipe keys, e.g. `lora: {adapter: lora}`.")
    names = list(args.methods) if args.only is None else list(args.only)
    unknown = [n for n in names if n not in args.methods]
    if unknown:
        raise RecipeError(f"`only` names {unknown}, which `methods` does not define ({', '.join(args.methods)}).")
    if not Path(args.general_text).is_file():
        raise RecipeError(f"The general-text file {args.general_text!r} does not exist.")
    runs = []
    for name in names:
        overrides = args.methods[name] or {}
        if not isinstance(overrides, dict):
            raise RecipeError(f"Method {name!r} must map recipe keys to values, got {overrides!r}.")
        fixed = [k for k in overrides if k in MATCHED_KEYS]
        if fixed:
            raise RecipeError(f"Method {name!r} changes {fixed}: those keys are the matched budget, the same for "
                              "every method (set them in the SFT recipe).")
        run = MethodRun(name, overrides, Path(args.output_dir) / "runs" / name)
        try:  # unknown keys and bad values fail here, for every method, before anything trains
            sft_parser.parse_args_and_config(args=["--config", args.sft_config, *run.flags()])
        except (ValueError, SystemExit) as error:
            raise RecipeError(f"Method {name!r}: its recipe keys do not parse ({error}).") from None
        runs.append(run)
    return runs


def check_output_dir(args: CompareArguments) -> None:
    report = Path(args.output_dir) / RESULTS_FILE
    if report.exists() and not args.overwrite_output_dir:
        raise RecipeError(f"{args.output_dir!r} already holds a comparison ({RESULTS_FILE}). Choose another "
                          "`output_dir`, or pass `--overwrite_output_dir true` to redo the report (finished "
                          "method runs there are reused, not retrained).")


def train(run: MethodRun, sft_script: Path, sft_config: str) -> float:
    """Train one method with the SFT recipe in its own process; a finished run is reused. Returns wall seconds."""
    if (run.output_dir / FINISHED_MARKER).is_file():
        logger.warning("%s: reusing the finished run in %s", run.name, run.output_dir)
        return float("nan")
    log_file = run.output_dir.parent.parent / "logs" / f"{run.name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(sft_script), "--config", sft_config, "--output_dir", str(run.output_dir),
               "--task_eval_samples", "0", *run.flags()]
    print(f"[compare] training {run.name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    with open(log_file, "a") as log:  # a resumed run appends to the log of its interrupted start
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if finished.returncode != 0:
        tail = log_file.read_text().strip().splitlines()[-5:]
        raise RecipeError(f"Training {run.name!r} failed (exit {finished.returncode}); see {log_file}:\n  "
                          + "\n  ".join(tail))
    return seconds


def _training_record(run: MethodRun) -> dict:
    record = json.loads((run.output_dir / FINISHED_MARKER).read_text())
    return record.get("metrics", {})


def compare(args: CompareArguments, sft_script: Path, sft_parser) -> list[dict]:
    """Train every method (matched budget), evaluate them all on the same base, write the report; returns rows."""
    check_output_dir(args)
    runs = plan_runs(args, sft_parser)
    seconds = {run.name: train(run, sft_script, args.sft_config) for run in runs}
    print(f"[compare] evaluating {len(runs)} adapters", flush=True)
    results = evaluate_adapters([str(run.output_dir) for run in runs], general_text_path=args.general_text,
                                task_samples=args.task_eval_samples, max_length=args.max_length)
    rows = []
    for run, result in zip(runs, results):
        training = _training_record(run)
        rows.append({"name": run.name, "overrides": run.overrides, "wall_seconds": seconds[run.name],
                     "train_runtime": training.get("train_runtime"), "train_loss": training.get("train_loss"),
                     "steps": training.get("global_step"), **result})
    write_report(rows, args)
    return rows


# ---- the report ---------------------------------------------------------------------------------------------------


def task_gain(row: dict) -> float | None:
    """Exact match after − before (SFT), or share of pairs preferring `chosen` after − before (preference data)."""
    task = row.get("task")
    if not task:
        return None
    if task.get("task") == "exact_match":
        return task["exact_match_tuned"] - task["exact_match_base"]
    return task.get("chosen_preferred_tuned", 0.0) - task.get("chosen_preferred_base", 0.0)


def answer_nll_gain(row: dict) -> float | None:
    """How much the held-out answers' NLL per token fell (base − tuned); it keeps resolving when exact match is 1."""
    task = row.get("task") or {}
    if "answer_nll_base" not in task:
        return None
    return task["answer_nll_base"] - task["answer_nll_tuned"]


def _cell(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def render_table(rows: list[dict]) -> str:
    header = ("| method | adapter | trainable params | lr | task: base → tuned | answer NLL/token: base → tuned | "
              "KL(base‖tuned) / token | perplexity: base → tuned | orthogonality error | max neuron-angle change (°) |")
    lines = [header, "|" + "---|" * (header.count(" | ") + 1)]
    for row in rows:
        task = row.get("task") or {}
        if task.get("task") == "exact_match":
            task_cell = f"exact match {task['exact_match_base']:.2f} → {task['exact_match_tuned']:.2f}"
        elif task:
            task_cell = f"chosen preferred {task['chosen_preferred_base']:.2f} → {task['chosen_preferred_tuned']:.2f}"
        else:
            task_cell = "—"
        nll = "—" if "answer_nll_base" not in task else f"{task['answer_nll_base']:.3g} → {task['answer_nll_tuned']:.3g}"
        lines.append(" | ".join([
            f"| {row['name']}", row.get("label", row["method"]), f"{row['trainable_parameters']:,}",
            _cell(row["overrides"].get("learning_rate"), "g"), task_cell, nll, _cell(row["kl_base_tuned"], ".3g"),
            f"{row['perplexity_base']:.3g} → {row['perplexity_tuned']:.3g}", _cell(row.get("orthogonality_error"), ".1e"),
            _cell(row["max_neuron_angle_change_deg"], ".2g")]) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Task gain (y: fall of the held-out answers' NLL, else the task metric's gain) against forgetting (x: mean
    KL(base‖tuned) per token on general text, log scale); one point per method, named in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    use_nll = all(answer_nll_gain(row) is not None for row in rows)
    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    markers = "osD^v<>pPX*h"
    for index, row in enumerate(rows):
        gain, kl = (answer_nll_gain(row) if use_nll else task_gain(row)), row["kl_base_tuned"]
        if gain is None or kl is None or kl <= 0:
            continue
        orthogonal = row["max_neuron_angle_change_deg"] < 1e-6  # angles between neurons kept: an orthogonal map
        axes.scatter(kl, gain, s=70, marker=markers[index % len(markers)], color=f"C{index % 10}",
                     edgecolors="black" if orthogonal else "none", linewidths=1.2, zorder=3,
                     label=f"{row['name']}{' (angles kept)' if orthogonal else ''}")
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor log ticks unlabelled: no overlaps
    axes.set_xlabel("forgetting: mean KL(base ‖ tuned) per token on general text (log scale)")
    axes.set_ylabel("task gain: held-out answer NLL/token, base − tuned" if use_nll
                    else "task gain: metric after − before")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    figure.tight_layout()
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)


def write_report(rows: list[dict], args: CompareArguments) -> None:
    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(args.sft_config) as handle:
        recipe = yaml.safe_load(handle) or {}
    budget = {k: recipe.get(k) for k in MATCHED_KEYS if k in recipe and k != "output_dir"}
    settings = {"sft_config": args.sft_config, "budget": budget, "general_text": args.general_text,
                "task_eval_samples": args.task_eval_samples, "max_length": args.max_length}
    (folder / RESULTS_FILE).write_text(json.dumps({"settings": settings, "rows": rows}, indent=2, default=str) + "\n")
    budget_line = ", ".join(f"{k} {v}" for k, v in budget.items())
    (folder / TABLE_FILE).write_text(f"# Method comparison\n\nMatched budget: {budget_line}.\n\n" + render_table(rows))
    title = f"{budget.get('model_name_or_path', 'model')}: {budget.get('max_steps', '?')} SFT steps per method"
    plot(rows, folder / PLOT_FILE, title)
