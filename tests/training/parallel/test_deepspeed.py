"""SFT and DPO under DeepSpeed ZeRO-2 / ZeRO-3 with two CPU processes (gloo), against single-process runs.

The first DeepSpeed launch on a machine compiles a communication op (~80 s); torch caches it in
~/.cache/torch_extensions, so later runs reuse it. The ZeRO runs keep TRL's gradient checkpointing (with
`use_reentrant`, which TRL forces for peft under ZeRO-3) against references trained without it.
"""

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.support.distributed import NO_CHECKPOINTING, assert_same_adapter, check_regularised_run, recipe_args
from tests.support.recipes import (
    REPO,
    SCRIPTS,
    assert_falling,
    check_ok,
    launch,
    recipe_env,
    recipe_flags,
    train_losses,
)

pytest.importorskip("deepspeed")

CONFIGS = {name: REPO / "accelerate_configs" / f"{name}.yaml" for name in ("zero2", "zero3", "zero3_offload")}
CASES = [
    ("zero2", "sft.py"),
    ("zero2", "dpo.py"),
    ("zero3", "sft.py"),
    ("zero3", "dpo.py"),
    ("zero3_offload", "sft.py"),
]


def zero_launch(zero: str, script: str, args: list[str]):
    """`script` in two processes under the DeepSpeed config `zero`, finished without error."""
    result = launch(script, args, processes=2, config_file=CONFIGS[zero])
    check_ok(result)
    return result


@pytest.fixture(scope="module")
def single_process_runs(assets):
    runs = {}
    for script, data in (("sft.py", assets["sft"]), ("dpo.py", assets["dpo"])):
        output_dir = assets["root"] / f"single-{script[:3]}"
        check_ok(launch(script, recipe_args(assets["model"], data, output_dir, per_device=8) + NO_CHECKPOINTING))
        runs[script] = output_dir
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("zero, script", CASES)
def test_zero_matches_a_single_process_run(assets, single_process_runs, zero, script):
    data = assets["sft"] if script == "sft.py" else assets["dpo"]
    output_dir = assets["root"] / f"{zero}-{script[:3]}"
    zero_launch(zero, script, recipe_args(assets["model"], data, output_dir, per_device=4))
    reference = single_process_runs[script]
    assert_same_adapter(
        load_file(output_dir / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    )
    # the saved adapter loads in a fresh process without DeepSpeed and gives the single-process run's logits
    script_text = f"""
import goft, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
def logits(adapter):
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained({str(assets["model"])!r})
        return PeftModel.from_pretrained(base, adapter)(ids).logits
print((logits({str(output_dir)!r}) - logits({str(reference)!r})).abs().max().item())
"""
    env = recipe_env()
    loaded = subprocess.run([sys.executable, "-c", script_text], env=env, capture_output=True, text=True)
    check_ok(loaded)
    assert float(loaded.stdout.split()[-1]) < 1e-4


@pytest.mark.slow
def test_zero3_dpo_from_an_sft_adapter(assets):
    sft_dir = assets["root"] / "zero3-sft-for-dpo"
    zero_launch("zero3", "sft.py", recipe_args(assets["model"], assets["sft"], sft_dir, per_device=4))
    output_dir = assets["root"] / "zero3-dpo-from-sft"
    zero_launch("zero3", "dpo.py", recipe_args(sft_dir, assets["dpo"], output_dir, per_device=4))
    last = output_dir / "checkpoint-4" / "trainer_state.json"
    first_loss = next(e["loss"] for e in json.loads(last.read_text())["log_history"] if "loss" in e)
    assert abs(first_loss - 0.6931) < 1e-3  # reference = the SFT policy: the first DPO loss is log 2
    assert (
        load_file(output_dir / "adapter_model.safetensors").keys()
        == load_file(sft_dir / "adapter_model.safetensors").keys()
    )


@pytest.mark.slow
def test_merge_into_a_zero3_partitioned_model(assets):
    """Merging gathers each partitioned weight, rotates it and partitions it again (ranks 0 and 1 over gloo)."""
    result = launch(SCRIPTS / "zero3_merge.py", [str(assets["model"])], processes=2)
    check_ok(result)
    difference, scale, error = map(float, result.stdout.split("RESULT")[-1].split())
    assert difference < 1e-5 * max(scale, 1.0) and error <= 1e-5


@pytest.mark.slow
def test_zero3_on_a_4bit_base(assets):
    """QLoRA-style sharding: 4-bit weights stored in the compute dtype are partitioned like any parameter."""
    output_dir = assets["root"] / "zero3-4bit"
    args = recipe_args(assets["model"], assets["sft"], output_dir, per_device=4) + recipe_flags(load_in_4bit=True)
    zero_launch("zero3", "sft.py", args)
    assert_falling(train_losses(output_dir))
    summary = json.loads((output_dir / "goft_run.json").read_text())
    assert summary["world_size"] == 2 and summary["metrics"]["orthogonality_error"] <= 1e-5
    assert summary["parallelism"] == "DeepSpeed ZeRO-3"
    saved = load_file(output_dir / "adapter_model.safetensors")
    assert saved and all(t.numel() > 0 for t in saved.values())


# Each method's regulariser under DeepSpeed: in the loss (HRA, qGOFT; ZeRO-3 gathers the adapter tensors for it) or,
# for SORSA's after-clipping rule, moved into the loss with weight gamma / lr since DeepSpeed steps inside its engine.
REGULARIZED = {"hra-zero3": ("zero3", "hra"), "qgoft-zero3": ("zero3", "qgoft"), "sorsa-zero2": ("zero2", "sorsa")}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(REGULARIZED))
def test_regularisers_under_deepspeed_match_a_single_process_run(assets, case):
    zero, method = REGULARIZED[case]
    result = check_regularised_run(assets, case, method, lambda flags: zero_launch(zero, "sft.py", flags))
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
