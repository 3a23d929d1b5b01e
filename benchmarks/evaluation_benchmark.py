"""What evaluation costs, this checkout against an earlier commit, side by side in one run.

    python -m benchmarks.evaluation_benchmark --baseline 1f970bd     # the commit before evaluation was sped up

Two workloads, each run by both versions (the baseline from a temporary ``git worktree`` of that commit), in their
own processes, on the embedded SmolLM2-135M-Instruct:

* ``stage``: the SFT demo recipe without its anchor (``sft_compare.yaml``, one training step), once with its
  before/after measures (task metric, retention questions) and once without; the stage's evaluation time is the
  difference;
* ``point``: a comparison of ``--points`` strict-GOFT points (the SFT comparison's recipe, one learning rate each):
  the seconds each point took, training and evaluation (the comparison's own timings).

This checkout runs each workload twice: with empty stores of base replies and of dequantized GGUF copies (a first run
on a machine) and with the stores its first run filled (every later run on the same base). The baseline has no
store. The table reports the seconds and the ratios baseline / this checkout. The workloads' base is the embedded
GGUF model, so the dequantized copy counts in both.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser

from benchmarks.measure import machine
from goft.io.formats import markdown_table, write_json

REPOSITORY = Path(__file__).resolve().parent.parent
STAGE_RECIPE = "recipes/configs/smollm2/sft_compare.yaml"  # the SFT demo without its anchor
COMPARISON_RECIPE = "recipes/configs/smollm2/sft_compare.yaml"
WORKLOADS = ("stage", "point")


@dataclass
class EvaluationBenchmarkArguments:
    baseline: str = field(default="1f970bd", metadata={"help": "The commit to compare with."})
    workloads: list[str] = field(default_factory=lambda: list(WORKLOADS), metadata={"help": "stage, point."})
    points: int = field(default=2, metadata={"help": "Comparison points per comparison run."})
    output: str = field(default="runs/benchmarks/evaluation.json", metadata={"help": "Where the JSON results go."})

    def __post_init__(self):
        unknown = [w for w in self.workloads if w not in WORKLOADS]
        if unknown:
            raise ValueError(f"Unknown workloads {unknown}; choose from: {', '.join(WORKLOADS)}.")
        if self.points < 1:
            raise ValueError("--points must be at least 1.")


def timed(command: list[str], tree: Path, store: str, log: Path) -> float:
    env = {  # the stores of base replies and of dequantized GGUF copies: empty on a first run, then filled
        **os.environ,
        "PYTHONPATH": str(tree),
        "HF_HUB_OFFLINE": "1",
        "GOFT_REFERENCE_CACHE": os.path.join(store, "base_replies"),
        "GOFT_DEQUANTIZED_CACHE": os.path.join(store, "dequantized"),
    }
    start = time.perf_counter()
    with open(log, "w") as out:
        finished = subprocess.run(command, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    if finished.returncode != 0:
        tail = "\n".join(log.read_text().strip().splitlines()[-8:])
        raise RuntimeError(f"{' '.join(command)} failed in {tree}:\n{tail}")
    return time.perf_counter() - start


def stage(tree: Path, work: Path, store: str, name: str) -> dict:
    """The SFT demo stage with and without its measures; the difference is what its evaluation costs."""
    seconds = {}
    for measures in (True, False):
        flags = [] if measures else ["--retention_eval", "false", "--task_eval_samples", "0"]
        out = work / f"{name}-stage-{'measured' if measures else 'bare'}"
        command = [sys.executable, "recipes/sft.py", "--config", STAGE_RECIPE, "--output_dir", str(out)]
        command += ["--max_steps", "1", *flags]
        kind = "measured" if measures else "bare"  # each its own stores: both start as a first or a later run
        seconds[kind] = timed(command, tree, os.path.join(store, kind), work / f"{out.name}.log")
    return {**seconds, "evaluation": seconds["measured"] - seconds["bare"]}


def point(tree: Path, work: Path, store: str, name: str, points: int) -> dict:
    """A comparison of `points` strict-GOFT points; the seconds of each point (training and evaluation)."""
    folder = work / f"{name}-comparison"
    rates = [1.0e-4 * (index + 1) for index in range(points)]
    config = {
        "recipe": COMPARISON_RECIPE,
        "output_dir": str(folder),
        "task_eval_samples": 40,
        "max_length": 256,
        "methods": {"givens": {"adapter": "givens", "adapter_target_modules": "all-linear", "learning_rate": rates}},
    }
    config_file = work / f"{name}-compare.yaml"
    config_file.write_text(yaml.safe_dump(config))
    total = timed(
        [sys.executable, "recipes/compare.py", "--config", str(config_file)], tree, store, work / f"{name}-point.log"
    )
    seconds = list(json.loads((folder / "timings.json").read_text()).values())
    return {"total": total, "per_point": seconds, "median_point": statistics.median(seconds)}


def main(args: EvaluationBenchmarkArguments) -> dict:
    results: dict = {"benchmark": "evaluation", "machine": machine(torch.device("cpu"))}
    with tempfile.TemporaryDirectory(prefix="goft-evaluation-benchmark-") as scratch:
        work = Path(scratch)
        baseline = work / "baseline-tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=REPOSITORY, check=True)
        try:
            versions = {  # the baseline has no store; this checkout's second run finds what its first one kept
                f"baseline {args.baseline}": baseline,
                "this checkout, empty store": REPOSITORY,
                "this checkout, filled store": REPOSITORY,
            }
            results["baseline"] = args.baseline
            results["commit"] = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True
            ).stdout.strip()
            for workload in args.workloads:
                results[workload] = {}
                for index, (label, tree) in enumerate(versions.items()):
                    name, store = f"{workload}-{index}", str(work / f"store-{workload}")
                    print(f"[evaluation benchmark] {workload}: {label}", flush=True)
                    if workload == "stage":
                        results[workload][label] = stage(tree, work, store, name)
                    else:
                        results[workload][label] = point(tree, work, store, name, args.points)
                    write_json(args.output, results)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=REPOSITORY, check=False)
    write_json(args.output, results)
    print(report(results))
    return results


def report(results: dict) -> str:
    rows = []
    for workload, measure in (("stage", "evaluation"), ("point", "median_point")):
        by_version = results.get(workload)
        if not by_version:
            continue
        baseline = next(iter(by_version.values()))[measure]
        for label, found in by_version.items():
            rows.append([workload, measure, label, f"{found[measure]:.0f}", f"{baseline / found[measure]:.2f}"])
    return "\n" + markdown_table(["workload", "seconds of", "version", "seconds", "baseline / this"], rows)


if __name__ == "__main__":
    (parsed,) = HfArgumentParser(EvaluationBenchmarkArguments).parse_args_into_dataclasses()
    main(parsed)
