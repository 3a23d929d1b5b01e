"""The GPU check: everything this repository claims about GPUs, measured in one command (under 8 minutes on one
H100/H200), every result as JSON in one folder.

    python -m benchmarks.gpu_check                        # writes runs/gpu_check/
    python -m benchmarks.gpu_check --stages layer sft     # some of the stages only

Stages, each timed, each allowed to fail without stopping the others (the summary says which failed and why):

* ``self_check``: the fused rotation kernels' self-check per dtype (compiles them), with its time;
* ``tests``: the CUDA tests (``pytest -m cuda``: the kernels against the PyTorch path, the CUDA layer test);
* ``layer``: the layer benchmark in bf16 at d = 1024, 4096 and 8192 (8192 tokens): GOFT with the kernels and with
  the PyTorch path, LoRA r = 16, OFT and RoAd, with peak memory per step;
* ``kernel_blocks``: the kernels at every diagonal block width, d = 4096 (to choose the default);
* ``decode``: greedy decoding on the embedded SmolLM2-135M-Instruct in bf16, one sequence and a batch of four, with
  each adapter unmerged and merged beside the base (the kept rotations on the kernels' path);
* ``sft``: the SFT benchmark, strict GOFT against LoRA on the embedded SmolLM2-135M-Instruct in bf16;
* ``sft_4bit``: the same on a 4-bit (NF4) base, QLoRA-style, with bitsandbytes' CUDA kernels.

``--device cpu`` is a dry run of the check itself on small shapes (the kernels through ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from benchmarks import decode_benchmark, layer_benchmark, sft_benchmark
from benchmarks.measure import machine
from goft.io.formats import markdown_table, write_json
from goft.rotation import backend as rotation_backend
from goft.rotation.givens import KERNEL_DTYPES

REPOSITORY = Path(__file__).resolve().parent.parent
STAGES = ("self_check", "tests", "layer", "kernel_blocks", "decode", "sft", "sft_4bit")
LAYER_METHODS = [
    layer_benchmark.FROZEN,
    layer_benchmark.STRICT,
    layer_benchmark.STRICT_TORCH,
    "GOFT quasi",
    layer_benchmark.LORA,
    "OFT",
    "RoAd",
]
SUMMARY_FILE = "gpu_check.json"


@dataclass
class GPUCheckArguments:
    output_dir: str = field(default="runs/gpu_check", metadata={"help": "The folder for every JSON result."})
    overwrite: bool = field(default=False, metadata={"help": "Replace the results of an earlier check there."})
    stages: list[str] = field(default_factory=lambda: list(STAGES), metadata={"help": f"Any of: {', '.join(STAGES)}."})
    device: str = field(default="cuda", metadata={"help": "cuda; cpu is a dry run of the check on small shapes."})
    layer_sizes: list[str] = field(
        default_factory=lambda: ["1024x8192", "4096x8192", "8192x8192"], metadata={"help": "DxT for `layer`."}
    )
    block_sweep_size: str = field(default="4096x8192", metadata={"help": "DxT for `kernel_blocks`."})
    layer_repeats: int = field(default=10, metadata={"help": "Timed rounds per layer measurement."})
    decode_model: str = field(default="smollm2-135m-instruct", metadata={"help": "The base model of `decode`."})
    decode_tokens: int = field(default=64, metadata={"help": "Tokens generated per sequence in `decode`."})
    decode_repeats: int = field(default=5, metadata={"help": "Timed rounds per `decode` measurement."})
    sft_config: str = field(default="recipes/configs/smollm2/sft_givens.yaml", metadata={"help": "The SFT recipe."})
    sft_batch_size: int = field(default=8)
    sft_max_length: int = field(default=512)
    sft_warmup_steps: int = field(default=2)
    sft_steps: int = field(default=6)
    sft_recipe_args: list[str] = field(
        default_factory=lambda: ["dtype=bfloat16", "bf16=true"], metadata={"help": "Recipe settings for `sft`."}
    )
    sft_4bit_recipe_args: list[str] = field(
        default_factory=lambda: [
            "dtype=bfloat16",
            "bf16=true",
            "load_in_4bit=true",
            "bnb_4bit_quant_type=nf4",
            "use_bnb_nested_quant=true",
        ],
        metadata={"help": "Recipe settings for `sft_4bit`."},
    )

    def __post_init__(self):
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown or not self.stages:
            raise ValueError(f"Unknown or no stages {unknown}; choose from: {', '.join(STAGES)}.")
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"--device must be cuda (or cpu for a dry run), got {self.device!r}.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("The GPU check needs a CUDA device, and torch sees none (--device cpu is a dry run).")
        for size in [*self.layer_sizes, self.block_sweep_size]:
            layer_benchmark.parse_size(size)
        if not Path(self.sft_config).is_file():
            raise ValueError(f"The SFT recipe {self.sft_config!r} does not exist.")
        for pairs in (self.sft_recipe_args, self.sft_4bit_recipe_args):
            sft_benchmark.parse_recipe_args(pairs)
        summary = Path(self.output_dir) / SUMMARY_FILE
        if summary.exists() and not self.overwrite:
            raise ValueError(
                f"{summary} holds an earlier check; pass --overwrite to replace it, or another output_dir."
            )


def run_self_check(args: GPUCheckArguments, out: Path) -> dict:
    device = torch.device(args.device)
    results = []
    for dtype in KERNEL_DTYPES:
        start = time.perf_counter()
        failure = rotation_backend.self_check(device, dtype)
        results.append(
            {"dtype": str(dtype), "passed": failure is None, "failure": failure, "seconds": time.perf_counter() - start}
        )
    write_json(out / "self_check.json", {"device": str(device), "results": results})
    failed = [r for r in results if not r["passed"]]
    if failed:
        raise RuntimeError(f"the kernels failed their self-check: {failed}")
    return {"passed": [r["dtype"] for r in results]}


def run_tests(args: GPUCheckArguments, out: Path) -> dict:
    report = out / "cuda_tests.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "cuda",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
        "tests",
    ]
    completed = subprocess.run(
        command, cwd=REPOSITORY, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True
    )
    (out / "cuda_tests.log").write_text(completed.stdout + completed.stderr)
    last_line = (completed.stdout.strip().splitlines() or [""])[-1]
    if completed.returncode != 0:
        raise RuntimeError(f"pytest -m cuda exited {completed.returncode}: {last_line}")
    return {"pytest": last_line}


def run_layer(args: GPUCheckArguments, out: Path, sizes: list[str], methods: list[str], name: str) -> dict:
    results = layer_benchmark.main(
        layer_benchmark.LayerBenchmarkArguments(
            device=args.device,
            dtype="bfloat16",
            sizes=sizes,
            methods=methods,
            sweep_widths=[],
            repeats=args.layer_repeats,
            output=str(out / f"{name}.json"),
        )
    )
    return {"targets": results["targets"]}


def run_sft(args: GPUCheckArguments, out: Path, recipe_args: list[str], name: str) -> dict:
    summary = sft_benchmark.main(
        sft_benchmark.SFTBenchmarkArguments(
            config=args.sft_config,
            methods=["givens", "lora"],
            per_device_train_batch_size=args.sft_batch_size,
            max_length=args.sft_max_length,
            warmup_steps=args.sft_warmup_steps,
            steps=args.sft_steps,
            rounds=1,
            checkpointing=["off"],
            recipe_args=recipe_args,
            output=str(out / f"{name}.json"),
        )
    )
    return {"targets": summary["targets"]}


def run_decode(args: GPUCheckArguments, out: Path) -> dict:
    targets = []
    for batch_size in (1, 4):
        result = decode_benchmark.main(
            decode_benchmark.DecodeBenchmarkArguments(
                model=args.decode_model,
                device=args.device,
                batch_size=batch_size,
                new_tokens=args.decode_tokens,
                repeats=args.decode_repeats,
                output=str(out / f"decode_batch{batch_size}.json"),
            )
        )
        targets += [{**check, "target": f"{check['target']}, batch {batch_size}"} for check in result["targets"]]
    return {"targets": targets}


def stage_runners(args: GPUCheckArguments, out: Path) -> dict:
    blocks = list(layer_benchmark.KERNEL_BLOCK_METHODS)
    return {
        "self_check": lambda: run_self_check(args, out),
        "tests": lambda: run_tests(args, out),
        "layer": lambda: run_layer(args, out, args.layer_sizes, LAYER_METHODS, "layer"),
        "kernel_blocks": lambda: run_layer(args, out, [args.block_sweep_size], blocks, "kernel_blocks"),
        "decode": lambda: run_decode(args, out),
        "sft": lambda: run_sft(args, out, args.sft_recipe_args, "sft"),
        "sft_4bit": lambda: run_sft(args, out, args.sft_4bit_recipe_args, "sft_4bit"),
    }


def summary_table(stages: dict) -> str:
    rows = []
    for name, stage in stages.items():
        rows.append([name, "ok" if stage["ok"] else "FAILED", f"{stage['seconds']:.0f}", stage.get("error", "")])
        for check in stage.get("result", {}).get("targets", []):
            met = "yes" if check["met"] else "NO"
            rows.append(["", check["target"], f"{check['ratio']:.3f} (≤ {check['limit']:.2f})", met])
    return markdown_table(["stage", "status / target", "seconds / GOFT ÷ LoRA", "error / met"], rows)


def main(args: GPUCheckArguments) -> dict:
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    runners = stage_runners(args, out)
    started = time.perf_counter()
    stages = {}
    for name in args.stages:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        try:
            stages[name] = {"ok": True, "result": runners[name]()}
        except Exception as error:  # one failed stage must not cost the others their GPU time
            stages[name] = {
                "ok": False,
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(),
            }
            print(stages[name]["traceback"], file=sys.stderr, flush=True)
        stages[name]["seconds"] = time.perf_counter() - start
    summary = {
        "benchmark": "gpu_check",
        "machine": machine(torch.device(args.device)),
        "triton": _version("triton"),
        "seconds": time.perf_counter() - started,
        "stages": stages,
    }
    write_json(out / SUMMARY_FILE, summary)
    print(f"\n{summary['machine']['device']}, {summary['seconds']:.0f} s\n")
    print(summary_table(stages))
    print(f"\nwrote {out}/")
    return summary


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    (parsed,) = HfArgumentParser(GPUCheckArguments).parse_args_into_dataclasses()
    result = main(parsed)
    sys.exit(0 if all(stage["ok"] for stage in result["stages"].values()) else 1)
