"""How long a comparison will take: the median of the runs timed so far (`TIMINGS_FILE` in `output_dir`), or before
any, a first guess from the model's size, the recipe's steps and tokens, and this machine's measured matmul speed.
"""

from __future__ import annotations

import math
import time

import torch

from goft.comparison.arguments import CompareArguments, shared_recipe
from goft.io.model_source import resolve_model_source

TIMINGS_FILE = "timings.json"
STEP_EFFICIENCY = 0.5  # share of the measured matmul speed a training step reaches (first guess, before timings)


def matmul_flops_per_second(seconds: float = 0.3, size: int = 512) -> float:
    """This machine's float32 matmul speed, measured on the threads torch uses."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


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
    recipe = shared_recipe(args)
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


def format_minutes(seconds: float) -> str:
    return "?" if math.isnan(seconds) else f"{seconds / 60:.0f} min"
