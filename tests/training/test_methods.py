"""Every method a recipe offers trains through `recipes/sft.py` on a tiny model, saves an adapter that peft loads,
and logs its regulariser exactly when it has one switched on."""

import json
import math

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from goft.training.arguments.cli import run_recipe
from tests.support.recipes import (
    assert_falling,
    check_ok,
    common_args,
    launch,
    recipe_flags,
    recipe_script,
    train_losses,
)

SFT = recipe_script("sft")

# (flags, peft_type saved, regulariser metric logged or None); sizes fit the tiny model (widths 24, 48, 80)
METHODS = {
    "givens": ([], "GIVENS", None),
    "givens-quasi": (["--givens_quasi", "true"], "GIVENS", "qgoft_penalty"),
    "givens-quasi-no-penalty": (["--givens_quasi", "true", "--givens_penalty_weight", "0"], "GIVENS", None),
    "givens-scaling": (["--givens_scaling", "true"], "GIVENS", None),
    "sorsa": (["--adapter", "sorsa", "--sorsa_r", "8"], "SORSA", "sorsa_orthonormality"),
    "sorsa-no-regulariser": (["--adapter", "sorsa", "--sorsa_r", "8", "--sorsa_gamma", "0"], "SORSA", None),
    "hra": (["--adapter", "hra", "--hra_r", "4"], "HRA", "hra_orthogonality"),
    "hra-no-regulariser": (["--adapter", "hra", "--hra_r", "4", "--hra_lambda", "0"], "HRA", None),
    "oft": (["--adapter", "oft", "--oft_block_size", "8"], "OFT", None),
    "boft": (["--adapter", "boft", "--boft_block_size", "4"], "BOFT", None),
    "road": (["--adapter", "road", "--road_group_size", "8"], "ROAD", None),
    "lora": (["--adapter", "lora"], "LORA", None),
}
REGULARIZER_METRICS = ("qgoft_penalty", "sorsa_orthonormality", "hra_orthogonality")
INNER_LOOP = ("givens", "hra")  # one method without a regulariser, one with; the others train in the full run


@pytest.mark.parametrize("method", [m if m in INNER_LOOP else pytest.param(m, marks=pytest.mark.slow) for m in METHODS])
def test_every_method_trains_through_the_sft_recipe(assets, tmp_path, method):
    flags, peft_type, metric = METHODS[method]
    output_dir = tmp_path / method
    argv = common_args(assets["model"], assets["sft"], output_dir, steps=6)
    argv += recipe_flags(adapter_target_modules="all-linear", learning_rate="1e-2") + flags
    run_recipe(SFT["make_parser"], SFT["main"], argv)

    assert json.loads((output_dir / "adapter_config.json").read_text())["peft_type"] == peft_type
    assert_falling(train_losses(output_dir))
    history = json.loads((output_dir / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    for name in REGULARIZER_METRICS:
        logged = [entry[name] for entry in history if name in entry]
        if name == metric:
            assert len(logged) == 6 and all(math.isfinite(x) and x >= 0 for x in logged), logged
        else:
            assert not logged, (name, logged)

    # the saved adapter loads with plain peft and changes the model
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    base = AutoModelForCausalLM.from_pretrained(assets["model"])
    with torch.no_grad():
        before = base(ids).logits
        after = PeftModel.from_pretrained(base, output_dir)(ids).logits
    assert (after - before).abs().max() > 1e-4


@pytest.mark.slow
def test_sorsa_rule_under_ddp_matches_a_single_process_run(assets, tmp_path):
    """Two processes with half the batch each: the same adapter as one process with the whole batch, SORSA's
    after-clipping step included (each rank adds the same regulariser gradient to its averaged gradients)."""
    flags = recipe_flags(adapter="sorsa", sorsa_r=8, adapter_target_modules="all-linear", learning_rate="1e-2")
    single, double = tmp_path / "single", tmp_path / "ddp"
    run_recipe(SFT["make_parser"], SFT["main"], common_args(assets["model"], assets["sft"], single, steps=4) + flags)
    ddp_args = common_args(assets["model"], assets["sft"], double, steps=4) + flags
    ddp_args[ddp_args.index("--per_device_train_batch_size") + 1] = "2"
    check_ok(launch("sft.py", ddp_args, processes=2))
    assert json.loads((double / "goft_run.json").read_text())["world_size"] == 2
    reference = load_file(single / "adapter_model.safetensors")
    trained = load_file(double / "adapter_model.safetensors")
    for name, tensor in reference.items():
        torch.testing.assert_close(trained[name], tensor, rtol=0, atol=1e-5)
    logged = [
        e["sorsa_orthonormality"]
        for e in json.loads((double / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
        if "sorsa_orthonormality" in e
    ]
    assert len(logged) == 4 and logged[-1] > logged[0]  # it starts orthonormal, training moves it away


def test_dpo_trains_other_methods_only_when_allowed_and_logs_their_regulariser(assets, tmp_path):
    dpo = recipe_script("dpo")
    output_dir = tmp_path / "dpo-hra"
    argv = common_args(assets["model"], assets["dpo"], output_dir, steps=4)
    argv += recipe_flags(adapter="hra", hra_r=4, adapter_target_modules="all-linear")
    with pytest.raises(SystemExit) as refused:  # alignment stages are strict GOFT unless told otherwise
        run_recipe(dpo["make_parser"], dpo["main"], argv)
    assert refused.value.code == 2 and not output_dir.exists()
    run_recipe(dpo["make_parser"], dpo["main"], argv + recipe_flags(allow_non_orthogonal_alignment=True))
    history = json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    logged = [e["hra_orthogonality"] for e in history if "hra_orthogonality" in e]
    assert len(logged) == 4 and all(math.isfinite(x) for x in logged)
    assert "HRA (Householder reflections)" in (output_dir / "README.md").read_text()
