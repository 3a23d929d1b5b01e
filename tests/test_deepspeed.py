"""SFT and DPO under DeepSpeed ZeRO-2 / ZeRO-3 with two CPU processes (gloo), against single-process runs.

The first DeepSpeed launch on a machine compiles a communication op (~80 s); torch caches it in
~/.cache/torch_extensions, so later runs reuse it.
"""

import json
import runpy
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from goft.training.cli import run_recipe

from .test_recipes import REPO, assets, check_ok, launch, recipe_env  # noqa: F401  (assets is a fixture)

pytest.importorskip("deepspeed")
SFT = runpy.run_path(str(REPO / "recipes" / "sft.py"), run_name="sft_recipe")

CONFIGS = {name: REPO / "accelerate_configs" / f"{name}.yaml" for name in ("zero2", "zero3", "zero3_offload")}
CASES = [("zero2", "sft.py"), ("zero2", "dpo.py"), ("zero3", "sft.py"), ("zero3", "dpo.py"), ("zero3_offload", "sft.py")]
# Same seed, same data: two processes with 4 examples each see exactly the 8 examples that one process sees in
# a batch of 8, so the adapters agree up to float summation order.
ADAPTER_TOLERANCE = 1e-5
# The single-process references train without gradient checkpointing; the ZeRO runs keep TRL's default (on, with
# `use_reentrant`, which TRL forces for peft under ZeRO-3): each match also shows checkpointing changes nothing.
NO_CHECKPOINTING = ["--gradient_checkpointing", "false"]


def args(model, data, output_dir, per_device: int) -> list[str]:
    return ["--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(output_dir),
            "--max_steps", "4", "--per_device_train_batch_size", str(per_device), "--learning_rate", "2e-2",
            "--logging_steps", "1", "--save_steps", "2", "--max_length", "64", "--report_to", "none", "--seed", "11"]


@pytest.fixture(scope="module")
def single_process_runs(assets):  # noqa: F811
    runs = {}
    for script, data in (("sft.py", assets["sft"]), ("dpo.py", assets["dpo"])):
        output_dir = assets["root"] / f"single-{script[:3]}"
        check_ok(launch(script, args(assets["model"], data, output_dir, per_device=8) + NO_CHECKPOINTING))
        runs[script] = output_dir
    return runs


def assert_same_adapter(saved, reference) -> None:
    assert saved.keys() == reference.keys()
    for name, tensor in reference.items():
        assert saved[name].shape == tensor.shape and saved[name].numel() > 0, name  # complete, not sharded/empty
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=ADAPTER_TOLERANCE)


@pytest.mark.parametrize("zero, script", CASES)
def test_zero_matches_a_single_process_run(assets, single_process_runs, zero, script):  # noqa: F811
    data = assets["sft"] if script == "sft.py" else assets["dpo"]
    output_dir = assets["root"] / f"{zero}-{script[:3]}"
    port = 29550 + CASES.index((zero, script))
    result = launch(script, args(assets["model"], data, output_dir, per_device=4), processes=2,
                    config_file=CONFIGS[zero], port=port)
    check_ok(result)
    reference = single_process_runs[script]
    assert_same_adapter(load_file(output_dir / "adapter_model.safetensors"),
                        load_file(reference / "adapter_model.safetensors"))
    # the saved adapter loads in a fresh process without DeepSpeed and gives the single-process run's logits
    script_text = f"""
import goft, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
def logits(adapter):
    with torch.no_grad():
        return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(assets['model'])!r}), adapter)(ids).logits
print((logits({str(output_dir)!r}) - logits({str(reference)!r})).abs().max().item())
"""
    env = recipe_env()
    loaded = subprocess.run([sys.executable, "-c", script_text], env=env, capture_output=True, text=True)
    check_ok(loaded)
    assert float(loaded.stdout.split()[-1]) < 1e-4


def test_zero3_dpo_from_an_sft_adapter(assets):  # noqa: F811
    sft_dir = assets["root"] / "zero3-sft-for-dpo"
    check_ok(launch("sft.py", args(assets["model"], assets["sft"], sft_dir, per_device=4), processes=2,
                    config_file=CONFIGS["zero3"], port=29560))
    output_dir = assets["root"] / "zero3-dpo-from-sft"
    check_ok(launch("dpo.py", args(sft_dir, assets["dpo"], output_dir, per_device=4), processes=2,
                    config_file=CONFIGS["zero3"], port=29561))
    last = output_dir / "checkpoint-4" / "trainer_state.json"
    first_loss = next(e["loss"] for e in json.loads(last.read_text())["log_history"] if "loss" in e)
    assert abs(first_loss - 0.6931) < 1e-3  # reference = the SFT policy: the first DPO loss is log 2
    assert load_file(output_dir / "adapter_model.safetensors").keys() == load_file(sft_dir / "adapter_model.safetensors").keys()


def test_merge_into_a_zero3_partitioned_model(assets):  # noqa: F811
    """Merging gathers each partitioned weight, rotates it and partitions it again (ranks 0 and 1 over gloo)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "accelerate_configs" / "cpu_2proc.yaml"), "--main_process_port", "29565",
               str(REPO / "tests" / "scripts" / "zero3_merge.py"), str(assets["model"])]
    result = subprocess.run(command, cwd=REPO, env=recipe_env(), capture_output=True, text=True, timeout=600)
    check_ok(result)
    difference, scale, error = map(float, result.stdout.split("RESULT")[-1].split())
    assert difference < 1e-5 * max(scale, 1.0) and error <= 1e-5


def test_zero3_on_a_4bit_base(assets):  # noqa: F811
    """QLoRA-style sharding: 4-bit weights stored in the compute dtype are partitioned like any parameter."""
    from .test_recipes import assert_falling, train_losses

    output_dir = assets["root"] / "zero3-4bit"
    check_ok(launch("sft.py", args(assets["model"], assets["sft"], output_dir, per_device=4) + ["--load_in_4bit", "true"],
                    processes=2, config_file=CONFIGS["zero3"], port=29566))
    assert_falling(train_losses(output_dir))
    summary = json.loads((output_dir / "goft_run.json").read_text())
    assert summary["world_size"] == 2 and summary["metrics"]["orthogonality_error"] <= 1e-5
    assert summary["parallelism"] == "DeepSpeed ZeRO-3"
    saved = load_file(output_dir / "adapter_model.safetensors")
    assert saved and all(t.numel() > 0 for t in saved.values())


def logged_values(output_dir, metric: str) -> list[float]:
    history = json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    return [entry[metric] for entry in history if metric in entry]


def assert_same_regularised_run(output_dir, reference, metric: str) -> None:
    """The same adapter as the single-process `reference`, and the same logged (non-zero) regulariser values."""
    assert_same_adapter(load_file(output_dir / "adapter_model.safetensors"),
                        load_file(reference / "adapter_model.safetensors"))
    logged, expected = logged_values(output_dir, metric), logged_values(reference, metric)
    assert len(logged) == 4 and max(logged) > 0 and logged == pytest.approx(expected, rel=1e-4, abs=1e-6)


# The regularised methods: (recipe flags, the logged metric).
REGULARISED_METHODS = {
    "hra": (["--adapter", "hra", "--hra_r", "4", "--hra_lambda", "0.01"], "hra_orthogonality"),
    # SGD: Adam turns the sign of near-zero gradients, which summation order decides, into full steps
    "qgoft": (["--givens_quasi", "true", "--givens_penalty_weight", "0.1", "--optim", "sgd", "--learning_rate", "0.5"],
              "qgoft_penalty"),
    "sorsa": (["--adapter", "sorsa", "--sorsa_r", "8"], "sorsa_orthonormality"),
}


def regularised_reference(assets, method: str):  # noqa: F811
    """`method`'s single-process run (batch 8, checkpointing off, in-process): (its folder, its flags, its metric)."""
    flags, metric = REGULARISED_METHODS[method]
    flags = flags + ["--adapter_target_modules", "all-linear"]
    reference = assets["root"] / f"single-regularised-{method}"
    if not (reference / "adapter_model.safetensors").exists():
        run_recipe(SFT["make_parser"], SFT["main"],
                   args(assets["model"], assets["sft"], reference, per_device=8) + flags + NO_CHECKPOINTING)
    return reference, flags, metric


# Each method's regulariser under DeepSpeed: in the loss (HRA, qGOFT; ZeRO-3 gathers the adapter tensors for it) or,
# for SORSA's after-clipping rule, moved into the loss with weight gamma / lr since DeepSpeed steps inside its engine.
REGULARIZED = {"hra-zero3": ("zero3", "hra"), "qgoft-zero3": ("zero3", "qgoft"), "sorsa-zero2": ("zero2", "sorsa")}


@pytest.mark.parametrize("case", list(REGULARIZED))
def test_regularisers_under_deepspeed_match_a_single_process_run(assets, case):  # noqa: F811
    zero, method = REGULARIZED[case]
    reference, flags, metric = regularised_reference(assets, method)
    output_dir = assets["root"] / case
    result = launch("sft.py", args(assets["model"], assets["sft"], output_dir, per_device=4) + flags, processes=2,
                    config_file=CONFIGS[zero], port=29570 + list(REGULARIZED).index(case))
    check_ok(result)
    assert_same_regularised_run(output_dir, reference, metric)
    if case.startswith("sorsa"):
        assert "before clipping rather than after it" in result.stderr


def test_multi_node_template_is_a_valid_accelerate_config_like_zero3():
    """The multi-node template parses as an accelerate config and differs from zero3.yaml only in what spreads the
    run over machines."""
    from accelerate.commands.config.config_args import load_config_from_file

    multi = load_config_from_file(str(REPO / "accelerate_configs" / "multi_node_zero3.yaml")).to_dict()
    single = load_config_from_file(str(CONFIGS["zero3"])).to_dict()
    assert multi["num_machines"] == 2 and multi["num_processes"] == 16 and multi["main_process_port"] == 29500
    assert multi["main_process_ip"] and multi["deepspeed_config"] == single["deepspeed_config"]
    spread = {"num_machines", "num_processes", "machine_rank", "main_process_ip", "main_process_port"}
    assert {k: v for k, v in multi.items() if k not in spread} == {k: v for k, v in single.items() if k not in spread}
