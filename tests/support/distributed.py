"""A run spread over two processes (DeepSpeed, FSDP) against the same run in one process: the recipe flags both
take, and the checks that they trained the same adapter and logged the same regulariser values."""

import json

import pytest
import torch
from safetensors.torch import load_file

from goft.training.arguments.cli import run_recipe

from .recipes import recipe_script, run_flags

# Same seed, same data: two processes with 4 examples each see exactly the 8 examples that one process sees in
# a batch of 8, so the adapters agree up to float summation order.
ADAPTER_TOLERANCE = 1e-5
# The single-process references train without gradient checkpointing; the distributed runs keep TRL's default (on):
# each match also shows that checkpointing changes nothing.
NO_CHECKPOINTING = ["--gradient_checkpointing", "false"]

# The regularised methods: (recipe flags, the logged metric).
REGULARISED_METHODS = {
    "hra": (["--adapter", "hra", "--hra_r", "4", "--hra_lambda", "0.01"], "hra_orthogonality"),
    # SGD: Adam turns the sign of near-zero gradients, which summation order decides, into full steps
    "qgoft": (
        ["--givens_quasi", "true", "--givens_penalty_weight", "0.1", "--optim", "sgd", "--learning_rate", "0.5"],
        "qgoft_penalty",
    ),
    "sorsa": (["--adapter", "sorsa", "--sorsa_r", "8"], "sorsa_orthonormality"),
}


def recipe_args(model, data, output_dir, per_device: int) -> list[str]:
    """4 steps, a checkpoint every 2, seed 11: the run both sides of a comparison make."""
    return run_flags(
        model, data, output_dir, max_steps=4, per_device_train_batch_size=per_device, save_steps=2, seed=11
    )


def assert_same_adapter(saved, reference) -> None:
    assert saved.keys() == reference.keys()
    for name, tensor in reference.items():
        assert saved[name].shape == tensor.shape and saved[name].numel() > 0, name  # complete, not sharded/empty
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=ADAPTER_TOLERANCE)


def logged_values(output_dir, metric: str) -> list[float]:
    history = json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    return [entry[metric] for entry in history if metric in entry]


def assert_same_regularised_run(output_dir, reference, metric: str) -> None:
    """The same adapter as the single-process `reference`, and the same logged (non-zero) regulariser values."""
    assert_same_adapter(
        load_file(output_dir / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    )
    logged, expected = logged_values(output_dir, metric), logged_values(reference, metric)
    assert len(logged) == 4 and max(logged) > 0 and logged == pytest.approx(expected, rel=1e-4, abs=1e-6)


def check_regularised_run(assets, case: str, method: str, launch_run):
    """`method`'s regularised run, made by `launch_run(flags)` (two processes, a batch of 4 each) into the folder
    `case`: the same adapter and logged regulariser values as its single-process reference. Returns what `launch_run`
    returned."""
    reference, flags, metric = regularised_reference(assets, method)
    output_dir = assets["root"] / case
    result = launch_run(recipe_args(assets["model"], assets["sft"], output_dir, per_device=4) + flags)
    assert_same_regularised_run(output_dir, reference, metric)
    return result


def regularised_reference(assets, method: str):
    """`method`'s single-process run (batch 8, checkpointing off, in-process): (its folder, its flags, its metric)."""
    flags, metric = REGULARISED_METHODS[method]
    flags = flags + ["--adapter_target_modules", "all-linear"]
    reference = assets["root"] / f"single-regularised-{method}"
    if not (reference / "adapter_model.safetensors").exists():
        sft = recipe_script("sft")
        run_recipe(
            sft["make_parser"],
            sft["main"],
            recipe_args(assets["model"], assets["sft"], reference, per_device=8) + flags + NO_CHECKPOINTING,
        )
    return reference, flags, metric
