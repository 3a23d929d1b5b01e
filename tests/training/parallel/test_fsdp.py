"""SFT and DPO under FSDP1 and FSDP2 (the shipped accelerate configs) with two CPU processes over gloo, against
single-process runs: every method's adapter matches, regularisers included; the saved adapter is complete and loads
without FSDP; DPO continues an SFT adapter; a run resumes; and a Givens adapter merges into FSDP2-sharded weights.

The two-process runs keep TRL's default, gradient checkpointing on (FSDP1 with `use_reentrant`, FSDP2 without); the
single-process references train with it off, so each match also shows that checkpointing leaves the training alone.
"""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from goft.training.arguments.cli import run_recipe
from tests.support.distributed import NO_CHECKPOINTING, assert_same_adapter, check_regularised_run, recipe_args
from tests.support.ports import free_port
from tests.support.recipes import (
    REPO,
    SCRIPTS,
    check_ok,
    launch,
    recipe_env,
    recipe_flags,
    recipe_script,
    run_command,
    run_summary,
)

SFT, DPO = recipe_script("sft"), recipe_script("dpo")
CONFIGS = {name: REPO / "accelerate_configs" / f"{name}.yaml" for name in ("fsdp1", "fsdp2")}
CHECKPOINTING = {"fsdp1": ["--gradient_checkpointing_kwargs", '{"use_reentrant": true}'], "fsdp2": []}


def fsdp_launch(version: str, script: str, flags: list[str]):
    result = launch(script, flags + CHECKPOINTING[version], processes=2, config_file=CONFIGS[version])
    check_ok(result)
    return result


def data_for(assets, script):
    return assets["sft"] if script == "sft.py" else assets["dpo"]


@pytest.fixture(scope="module")
def references(assets):
    """One-process runs (batch 8 = two processes × 4), checkpointing off, in-process."""
    runs = {}
    for script, recipe in (("sft.py", SFT), ("dpo.py", DPO)):
        output_dir = assets["root"] / f"fsdp-reference-{script[:3]}"
        run_recipe(
            recipe["make_parser"],
            recipe["main"],
            recipe_args(assets["model"], data_for(assets, script), output_dir, per_device=8) + NO_CHECKPOINTING,
        )
        runs[script] = output_dir
    return runs


def logits_without_fsdp(model, adapter, merged: bool = False) -> torch.Tensor:
    """The adapter's logits on a fixed input, loaded in a fresh process with no FSDP (optionally merged)."""
    merge = ".merge_and_unload()" if merged else ""
    script = f"""
import goft, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(model)!r}), {str(adapter)!r}){merge}
with torch.no_grad():
    print(model(torch.tensor([[5, 17, 42, 99, 3, 250, 7]])).logits.flatten().tolist())
"""
    result = subprocess.run([sys.executable, "-c", script], env=recipe_env(), capture_output=True, text=True)
    check_ok(result)
    return torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
@pytest.mark.parametrize("version", ["fsdp1", "fsdp2"])
@pytest.mark.parametrize("script", ["sft.py", "dpo.py"])
def test_fsdp_matches_a_single_process_run(assets, references, version, script):
    output_dir = assets["root"] / f"{version}-{script[:3]}"
    held_out = ["--task_eval_samples", "2"]  # sharded generation needs every rank: skipped with a warning, no hang
    result = fsdp_launch(
        version, script, recipe_args(assets["model"], data_for(assets, script), output_dir, per_device=4) + held_out
    )
    assert "task_eval_samples is ignored under DeepSpeed and FSDP" in result.stderr
    reference = references[script]
    assert_same_adapter(
        load_file(output_dir / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    )
    assert_same_adapter(
        load_file(output_dir / "checkpoint-2" / "adapter_model.safetensors"),
        load_file(reference / "checkpoint-2" / "adapter_model.safetensors"),
    )
    summary = run_summary(output_dir)
    assert summary["world_size"] == 2 and summary["metrics"]["orthogonality_error"] <= 1e-5
    assert summary["parallelism"] == version.upper()  # really FSDP: on a CPU, accelerate alone would run DDP
    # complete and loadable without FSDP: the same logits as the single-process adapter, merged or not
    expected = logits_without_fsdp(assets["model"], reference)
    torch.testing.assert_close(logits_without_fsdp(assets["model"], output_dir), expected, rtol=0, atol=1e-4)
    if script == "sft.py":
        merged = logits_without_fsdp(assets["model"], output_dir, merged=True)
        torch.testing.assert_close(merged, expected, rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("version", ["fsdp1", "fsdp2"])
def test_dpo_under_fsdp_continues_an_sft_adapter(assets, version):
    sft_dir = assets["root"] / f"{version}-sft-for-dpo"
    fsdp_launch(version, "sft.py", recipe_args(assets["model"], assets["sft"], sft_dir, per_device=4))
    output_dir = assets["root"] / f"{version}-dpo-from-sft"
    fsdp_launch(version, "dpo.py", recipe_args(sft_dir, assets["dpo"], output_dir, per_device=4))
    history = json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    first_loss = next(entry["loss"] for entry in history if "loss" in entry)
    assert abs(first_loss - 0.6931) < 1e-3  # the reference is the SFT policy: the first DPO loss is log 2
    saved = load_file(output_dir / "adapter_model.safetensors")
    assert saved.keys() == load_file(sft_dir / "adapter_model.safetensors").keys()
    assert not (output_dir / "ref").exists()  # the frozen reference copy is not part of the result


# qGOFT and HRA: penalties in the loss, computed from whole tensors (DTensors gathered under FSDP2; under FSDP1
# the adapters are kept whole); SORSA: its after-clipping rule, which FSDP leaves a place for (unlike DeepSpeed).
REGULARIZED = {
    "qgoft-fsdp2": ("fsdp2", "qgoft"),
    "hra-fsdp1": ("fsdp1", "hra"),
    "sorsa-fsdp1": ("fsdp1", "sorsa"),
    "sorsa-fsdp2": ("fsdp2", "sorsa"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(REGULARIZED))
def test_regularisers_under_fsdp_match_a_single_process_run(assets, case):
    version, method = REGULARIZED[case]
    check_regularised_run(assets, case, method, lambda flags: fsdp_launch(version, "sft.py", flags))


@pytest.mark.slow
@pytest.mark.parametrize("version", ["fsdp1", "fsdp2"])
def test_an_interrupted_fsdp_run_resumes_from_its_checkpoint(assets, references, version):
    """A run stopped after checkpoint-2 (its folder holds only that checkpoint) resumes there and ends with the
    adapter of an uninterrupted run."""
    finished = assets["root"] / f"{version}-sft"
    if not (finished / "adapter_model.safetensors").exists():
        pytest.skip("needs the uninterrupted run of test_fsdp_matches_a_single_process_run")
    output_dir = assets["root"] / f"{version}-resumed"
    shutil.copytree(finished / "checkpoint-2", output_dir / "checkpoint-2")
    result = fsdp_launch(version, "sft.py", recipe_args(assets["model"], assets["sft"], output_dir, per_device=4))
    assert "Resuming from" in result.stderr and "checkpoint-2" in result.stderr
    assert_same_adapter(
        load_file(output_dir / "adapter_model.safetensors"), load_file(finished / "adapter_model.safetensors")
    )


@pytest.mark.slow
def test_merge_into_an_fsdp2_sharded_model(assets):
    """Merging reads each sharded (DTensor) weight whole, rotates it and shards it again (ranks 0 and 1, gloo)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", *recipe_flags(nproc_per_node=2, master_port=free_port())]
    result = run_command([*launcher, SCRIPTS / "fsdp2_merge.py", assets["model"]])
    check_ok(result)
    merged, restored, scale = map(float, result.stdout.split("RESULT")[-1].split())
    assert merged < 1e-5 * max(scale, 1.0) and restored < 1e-5 * max(scale, 1.0)


@pytest.mark.parametrize("version", ["fsdp1", "fsdp2"])
def test_the_fsdp_configs_parse_as_accelerate_configs(version):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS[version])).to_dict()
    fsdp = config["fsdp_config"]
    assert config["distributed_type"] == "FSDP" and fsdp["fsdp_version"] == int(version[-1])
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert version == "fsdp2" or fsdp["fsdp_use_orig_params"]  # FSDP1: adapter and frozen weights kept apart
