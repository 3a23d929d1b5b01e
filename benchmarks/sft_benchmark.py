"""End-to-end SFT steps through the recipe machinery, strict GOFT against LoRA r = 16, side by side.

    python -m benchmarks.sft_benchmark                     # the embedded SmolLM2-135M-Instruct, all linear layers

Each method trains in its own process (so that its peak memory is its own), built exactly as `recipes/sft.py`
builds it: the same recipe, batch, sequence length (packed rows of `max_length` tokens) and steps; only `adapter`
differs. Each method runs with gradient checkpointing off and on (TRL's default; `use_reentrant` as TRL sets it).
The processes alternate, variant after variant, for `rounds` rounds. Reported: the median step time over all timed
steps, the ratio to LoRA with the same checkpointing, the ratio of checkpointing on to off, tokens per second, and
the peak memory during the timed steps (resident set size on CPU, `torch.cuda.max_memory_allocated` on GPU).

Why this module is long: the parent that alternates the variants and the child that trains one of them share
their settings and result format; kept together, the two sides cannot drift apart.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainerCallback

from benchmarks.measure import machine, peak_rss_bytes, reset_peak_rss, rss_bytes
from goft.io.formats import markdown_table, write_json

REPOSITORY = Path(__file__).resolve().parent.parent
TARGET_TIME, TARGET_MEMORY = 1.10, 1.05  # strict GOFT / LoRA r = 16, on a CPU
CUDA_TARGET_TIME, CUDA_TARGET_MEMORY = 1.0, 1.0  # on a GPU
REFERENCE = "lora"
CHECKPOINTING = ("off", "on")


@dataclass
class SFTBenchmarkArguments:
    config: str = field(
        default="recipes/configs/smollm2/sft_givens.yaml",
        metadata={"help": "The SFT recipe: model, data, dtype and target modules come from it."},
    )
    methods: list[str] = field(
        default_factory=lambda: ["givens", "lora"],
        metadata={"help": "Values of the recipe's `adapter` key to compare (lora is the reference)."},
    )
    per_device_train_batch_size: int = field(default=8)
    max_length: int = field(default=128, metadata={"help": "Tokens per packed row."})
    warmup_steps: int = field(default=2, metadata={"help": "Untimed steps first, in each process."})
    steps: int = field(default=6, metadata={"help": "Timed steps per process."})
    rounds: int = field(default=2, metadata={"help": "Processes per method, alternating between methods."})
    lora_r: int = field(default=16)
    checkpointing: list[str] = field(
        default_factory=lambda: list(CHECKPOINTING),
        metadata={"help": "Gradient checkpointing settings to run: off, on or both."},
    )
    recipe_args: list[str] = field(
        default_factory=list,
        metadata={
            "help": "More recipe settings as key=value, for every method alike, e.g. dtype=bfloat16 bf16=true "
            "load_in_4bit=true (a QLoRA-style 4-bit base)."
        },
    )
    output: str = field(default="runs/benchmarks/sft.json", metadata={"help": "Where the JSON results go."})
    worker: str | None = field(default=None, metadata={"help": "Internal: train one method and write its numbers."})
    worker_output: str | None = field(default=None, metadata={"help": "Internal: the worker's JSON file."})
    worker_checkpointing: str = field(default="off", metadata={"help": "Internal: the worker's checkpointing."})

    def __post_init__(self):
        if not Path(self.config).is_file():
            raise ValueError(f"The SFT recipe {self.config!r} does not exist.")
        if REFERENCE not in self.methods:
            self.methods.append(REFERENCE)
        if not self.checkpointing or set(self.checkpointing) - set(CHECKPOINTING):
            raise ValueError(f"checkpointing must list off and/or on, not {self.checkpointing}.")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods lists a method twice: {self.methods}.")
        if min(self.per_device_train_batch_size, self.max_length, self.steps, self.rounds) < 1 or self.warmup_steps < 0:
            raise ValueError("batch size, max_length, steps and rounds must be >= 1, and warmup_steps >= 0.")
        self.recipe_settings = parse_recipe_args(self.recipe_args)
        own = sorted(set(self.recipe_settings) & set(benchmark_settings(self, REFERENCE, "", "off")))
        if own:
            raise ValueError(f"recipe_args cannot set {own}: the benchmark sets them (its own arguments, or fixed).")


def parse_recipe_args(pairs: list[str]) -> dict[str, str]:
    """``key=value`` pairs into recipe settings."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key or not value.strip():
            raise ValueError(f"A recipe argument is key=value, e.g. dtype=bfloat16; got {pair!r}.")
        settings[key] = value.strip()
    return settings


class StepTimer(TrainerCallback):
    """Times every optimizer step and, from the first timed step on, the peak memory."""

    def __init__(self, warmup_steps: int, device: torch.device):
        self.warmup_steps, self.device = warmup_steps, device
        self.step_seconds, self.tokens, self.baseline_bytes = [], [], None
        self._start = self._last_tokens = None

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.warmup_steps:  # the first timed step: memory from here on
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
                self.baseline_bytes = torch.cuda.memory_allocated(self.device)
            else:
                if not reset_peak_rss():
                    raise OSError("Cannot reset the peak resident set size (/proc/self/clear_refs) on this system.")
                self.baseline_bytes = rss_bytes()
        self._sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        if state.global_step > self.warmup_steps:
            self.step_seconds.append(time.perf_counter() - self._start)

    def on_log(self, args, state, control, logs=None, **kwargs):
        total = (logs or {}).get("num_tokens")
        if total is not None:
            if self._last_tokens is not None and state.global_step > self.warmup_steps:
                self.tokens.append(total - self._last_tokens)
            self._last_tokens = total

    def peak_bytes(self) -> int:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else peak_rss_bytes()


def recipe_flags(args: SFTBenchmarkArguments, method: str, output_dir: str, checkpointing: str = "off") -> list[str]:
    flags = {**benchmark_settings(args, method, output_dir, checkpointing), **args.recipe_settings}
    argv = ["--config", args.config]
    for key, value in flags.items():
        argv += [f"--{key}", str(value)]
    return argv


def benchmark_settings(args: SFTBenchmarkArguments, method: str, output_dir: str, checkpointing: str) -> dict:
    return {
        "adapter": method,
        "output_dir": output_dir,
        "gradient_checkpointing": str(checkpointing == "on").lower(),
        "max_steps": args.warmup_steps + args.steps,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": 1,
        "max_length": args.max_length,
        "packing": "true",
        "packing_strategy": "wrapped",
        "assistant_only_loss": "false",
        "save_strategy": "no",
        "logging_steps": 1,
        "task_eval_samples": 0,
        "eval_strategy": "no",
        "report_to": "none",
        **({"lora_r": args.lora_r, "lora_alpha": 2 * args.lora_r, "lora_dropout": 0.0} if method == "lora" else {}),
        "anchor_weight": 0,
        "replay_share": 0,
    }  # the adapters' own cost, nothing else


def run_worker(args: SFTBenchmarkArguments) -> dict:
    """Train one method through the SFT recipe machinery and return its timings and memory."""
    from trl import SFTConfig

    from goft.data.stages import SFT
    from goft.training.arguments.cli import make_recipe_parser, parse_recipe
    from goft.training.parallel.processes import use_all_cpu_cores
    from goft.training.prepare import prepare_run
    from goft.training.trainers import GoftSFTTrainer

    use_all_cpu_cores()
    with tempfile.TemporaryDirectory() as output_dir:
        *parsed, recipe_yaml = parse_recipe(
            make_recipe_parser(SFTConfig), recipe_flags(args, args.worker, output_dir, args.worker_checkpointing)
        )
        run = prepare_run(SFT, *parsed, recipe_yaml)
        trainer = run.make_trainer(GoftSFTTrainer)
        device = trainer.args.device
        timer = StepTimer(args.warmup_steps, device)
        trainer.add_callback(timer)
        trainer.train()
    model = trainer.model
    return {
        "method": args.worker,
        "checkpointing": args.worker_checkpointing,
        "step_seconds": timer.step_seconds,
        "tokens_per_step": timer.tokens,
        "peak_bytes": timer.peak_bytes(),
        "baseline_bytes": timer.baseline_bytes,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "device": machine(device),
    }


def spawn_worker(args: SFTBenchmarkArguments, method: str, checkpointing: str = "off") -> dict:
    """Run one method in a fresh process (its own peak memory) and read back its numbers."""
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "result.json"
        command = [
            sys.executable,
            "-m",
            "benchmarks.sft_benchmark",
            *worker_flags(args),
            "--worker",
            method,
            "--worker_output",
            str(result),
            "--worker_checkpointing",
            checkpointing,
        ]
        completed = subprocess.run(
            command, cwd=REPOSITORY, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"The {method} run (checkpointing {checkpointing}) failed (exit {completed.returncode}):\n"
                f"{completed.stderr[-4000:]}"
            )
        return json.loads(result.read_text())


def worker_flags(args: SFTBenchmarkArguments) -> list[str]:
    flags = []
    for f in fields(args):
        value = getattr(args, f.name)
        if f.name in ("worker", "worker_output", "worker_checkpointing", "output"):
            continue
        if f.name == "config":
            value = str(Path(value).resolve())
        if value == []:
            continue  # an empty list is the default; argparse wants at least one value after a list flag
        flags += [f"--{f.name}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return flags


def summarize(args: SFTBenchmarkArguments, runs: list[dict]) -> dict:
    rows = []
    for checkpointing in args.checkpointing:
        for method in args.methods:
            mine = [r for r in runs if r["method"] == method and r.get("checkpointing", "off") == checkpointing]
            steps = [s for r in mine for s in r["step_seconds"]]
            tokens = [t for r in mine for t in r["tokens_per_step"]]
            median_step = statistics.median(steps)
            tokens_per_step = (
                statistics.median(tokens) if tokens else args.per_device_train_batch_size * args.max_length
            )
            rows.append(
                {
                    "method": method,
                    "checkpointing": checkpointing,
                    "median_step_seconds": median_step,
                    "min_step_seconds": min(steps),
                    "max_step_seconds": max(steps),
                    "timed_steps": len(steps),
                    "tokens_per_step": tokens_per_step,
                    "tokens_per_second": tokens_per_step / median_step,
                    "peak_bytes": max(r["peak_bytes"] for r in mine),
                    "trainable_parameters": mine[0]["trainable_parameters"],
                }
            )
    row_of = {(r["method"], r["checkpointing"]): r for r in rows}
    on_cpu = runs[0]["device"]["device"].startswith("CPU")
    time_limit, memory_limit = (TARGET_TIME, TARGET_MEMORY) if on_cpu else (CUDA_TARGET_TIME, CUDA_TARGET_MEMORY)
    checks = []
    for row in rows:
        reference = row_of[(REFERENCE, row["checkpointing"])]
        row["time_vs_lora"] = row["median_step_seconds"] / reference["median_step_seconds"]
        row["memory_vs_lora"] = row["peak_bytes"] / reference["peak_bytes"]
        off = row_of.get((row["method"], "off"))
        if row["checkpointing"] == "on" and off is not None:  # what checkpointing costs and saves, per method
            row["time_vs_checkpointing_off"] = row["median_step_seconds"] / off["median_step_seconds"]
            row["memory_vs_checkpointing_off"] = row["peak_bytes"] / off["peak_bytes"]
        if row["method"] == "givens":
            suffix = "" if row["checkpointing"] == "off" else " (checkpointing on)"
            checks += [
                {
                    "target": f"step time{suffix}",
                    "ratio": row["time_vs_lora"],
                    "limit": time_limit,
                    "met": row["time_vs_lora"] <= time_limit,
                },
                {
                    "target": f"peak memory{suffix}",
                    "ratio": row["memory_vs_lora"],
                    "limit": memory_limit,
                    "met": row["memory_vs_lora"] <= memory_limit,
                },
            ]
    return {
        "benchmark": "sft",
        "machine": runs[0]["device"],
        "config": args.config,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "max_length": args.max_length,
        "warmup_steps": args.warmup_steps,
        "steps": args.steps,
        "rounds": args.rounds,
        "recipe_args": args.recipe_args,
        "results": rows,
        "targets": checks,
        "runs": runs,
    }


def _ratio(value) -> str:
    return "" if value is None else f"{value:.3f}"


def report(summary: dict) -> str:
    memory = "peak RSS" if summary["machine"]["device"].startswith("CPU") else "peak CUDA memory"
    table = markdown_table(
        [
            "method",
            "checkpointing",
            "median step s",
            "× LoRA",
            "tokens/s",
            f"{memory} MiB",
            "memory × LoRA",
            "time × off",
            "memory × off",
            "trainable params",
        ],
        [
            [
                r["method"],
                r["checkpointing"],
                f"{r['median_step_seconds']:.2f}",
                f"{r['time_vs_lora']:.3f}",
                f"{r['tokens_per_second']:.0f}",
                f"{r['peak_bytes'] / 2**20:.0f}",
                f"{r['memory_vs_lora']:.3f}",
                _ratio(r.get("time_vs_checkpointing_off")),
                _ratio(r.get("memory_vs_checkpointing_off")),
                f"{r['trainable_parameters']:,}",
            ]
            for r in summary["results"]
        ],
    )
    lines = [table]
    if summary["targets"]:
        lines += [
            "",
            markdown_table(
                ["target", "GOFT / LoRA", "limit", "met"],
                [
                    [c["target"], f"{c['ratio']:.3f}", f"≤ {c['limit']:.2f}", "yes" if c["met"] else "NO"]
                    for c in summary["targets"]
                ],
            ),
        ]
    return "\n".join(lines)


def main(args: SFTBenchmarkArguments) -> dict:
    runs = []
    for round_index in range(args.rounds):
        for checkpointing in args.checkpointing:
            for method in args.methods:
                print(f"round {round_index + 1}/{args.rounds}: {method}, checkpointing {checkpointing}", flush=True)
                runs.append(spawn_worker(args, method, checkpointing))
    summary = summarize(args, runs)
    print(
        f"\n{summary['machine']['device']}; {args.per_device_train_batch_size} × {args.max_length} tokens per step, "
        f"median of {args.steps} steps × {args.rounds} processes per method and checkpointing\n"
    )
    print(report(summary))
    print(f"\nwrote {write_json(args.output, summary)}")
    return summary


if __name__ == "__main__":
    (parsed,) = HfArgumentParser(SFTBenchmarkArguments).parse_args_into_dataclasses()
    if parsed.worker:
        write_json(parsed.worker_output, run_worker(parsed))
    else:
        main(parsed)
