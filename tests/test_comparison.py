"""The comparison runner: matched-budget training of several methods, evaluation, table, JSON and plot."""

import json
import re
import subprocess
import sys

import pytest
import yaml
from trl import SFTConfig

from goft.training.cli import make_recipe_parser
from goft.training.comparison import CompareArguments, compare
from goft.training.errors import RecipeError

from .test_recipes import REPO, assets, check_ok, recipe_env  # noqa: F401  (assets is a fixture)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def comparison(assets, tmp_path):  # noqa: F811
    sft_config = tmp_path / "sft.yaml"
    sft_config.write_text(yaml.safe_dump({
        "model_name_or_path": str(assets["model"]), "dataset_name": str(assets["sft"]), "dataset_test_size": 0.25,
        "max_steps": 3, "per_device_train_batch_size": 4, "max_length": 64, "logging_steps": 1, "save_steps": 3,
        "report_to": "none", "seed": 3, "adapter_target_modules": ["all-linear"], "dataloader_num_workers": 0}))
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"text": t}) + "\n" for t in (
        "The river ran slowly past the mill, and the miller watched the water turn the great wheel.",
        "Bread rises because yeast feeds on sugar and gives off small bubbles of gas inside the dough.")))
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump({
        "sft_config": str(sft_config), "output_dir": str(tmp_path / "out"), "general_text": str(general),
        "task_eval_samples": 4, "max_length": 64,
        "methods": {"givens": {"adapter": "givens", "learning_rate": 0.02},
                    "hra": {"adapter": "hra", "hra_r": 4, "learning_rate": 0.01},
                    "lora": {"adapter": "lora", "lora_r": 4, "learning_rate": 0.01}}}))
    return {"config": config, "out": tmp_path / "out", "tmp": tmp_path}


def run_compare(*args):
    return subprocess.run([sys.executable, str(REPO / "recipes" / "compare.py"), *map(str, args)], cwd=REPO,
                          env=recipe_env(), capture_output=True, text=True, timeout=900)


def test_comparison_trains_evaluates_and_reports(comparison):
    result = run_compare("--config", comparison["config"], "--only", "givens", "lora")
    check_ok(result)
    out = comparison["out"]
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["givens", "lora"]  # `only` picks from `methods`, in its order
    for row in rows:
        assert row["steps"] == 3 and row["trainable_parameters"] > 0
        assert row["kl_base_tuned"] > 0 and row["task"]["samples"] == 4
        assert row["task"]["answer_nll_tuned"] < row["task"]["answer_nll_base"]  # training fit the held-out answers
    givens, lora = rows
    assert givens["orthogonality_error"] <= 1e-5 and lora["orthogonality_error"] is None
    assert givens["max_neuron_angle_change_deg"] < 1e-3 < lora["max_neuron_angle_change_deg"]
    table = (out / "comparison.md").read_text()
    assert table.count("\n| givens") == 1 and table.count("\n| lora") == 1 and "max_steps 3" in table
    assert (out / "comparison.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "logs" / "lora.log").is_file()

    # the report is never replaced silently; with overwrite, finished runs are reused rather than retrained
    again = run_compare("--config", comparison["config"], "--only", "givens", "lora")
    assert again.returncode == 2 and "already holds a comparison" in again.stderr
    adapter = (out / "runs" / "givens" / "adapter_model.safetensors").read_bytes()
    redo = run_compare("--config", comparison["config"], "--only", "givens", "lora", "--overwrite_output_dir", "true")
    check_ok(redo)
    assert "reusing the finished run" in redo.stderr and "[compare] training" not in redo.stdout
    assert (out / "runs" / "givens" / "adapter_model.safetensors").read_bytes() == adapter


@pytest.mark.parametrize("change, message", [
    ({"methods": {"lora": {"adapter": "lora", "max_steps": 50}}}, "matched budget"),
    ({"methods": {"lora": {"adapter": "lora", "lora_rank": 4}}}, "do not parse"),
    ({"only": ["dora"]}, "which `methods` does not define"),
    ({"general_text": "missing.jsonl"}, "does not exist"),
    ({"methods": {}}, "`methods` is empty"),
])
def test_bad_comparisons_are_refused_before_training(comparison, change, message):
    config = yaml.safe_load(comparison["config"].read_text())
    config.update(change)
    args = CompareArguments(**config)
    with pytest.raises(RecipeError, match=re.escape(message)):
        compare(args, REPO / "recipes" / "sft.py", make_recipe_parser(SFTConfig))
    assert not comparison["out"].exists()
