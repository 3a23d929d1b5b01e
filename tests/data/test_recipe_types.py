"""End to end: `recipes/sft.py` and `recipes/dpo.py` train one step on the tiny chat model on each dataset type their
stage reads, and the adapter they save loads; evaluation rebuilds the held-out split of a Hub-style folder."""

import json

import pytest
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM

from goft.data.loading import rows_fingerprint
from goft.evaluation.runner import held_out_split
from goft.training.arguments.cli import run_recipe
from tests.support.data import write_jsonl
from tests.support.dataset_types import TYPES
from tests.support.recipes import common_args, recipe_flags, recipe_script

pytestmark = pytest.mark.slow

RECIPE_TYPES = [name for name in TYPES if name != "sft-tools-kept"]


def trains_and_loads(assets, stage: str, data, output_dir, *flags) -> None:
    recipe = recipe_script(stage)
    run_recipe(
        recipe["make_parser"], recipe["main"], common_args(assets["model"], data, output_dir, steps=1) + [*flags]
    )
    assert (output_dir / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(assets["model"])
    assert isinstance(PeftModel.from_pretrained(base, output_dir), PeftModel)


@pytest.mark.parametrize("name", RECIPE_TYPES)
def test_each_dataset_type_trains_through_its_recipe(assets, tmp_path, name):
    stage, make, _, _ = TYPES[name]
    data = write_jsonl([make(i) for i in range(12)], tmp_path / f"{name}.jsonl")
    scored = name != "sft-language-modeling"  # text rows have no answer to score
    trains_and_loads(assets, stage.name, data, tmp_path / "run", *recipe_flags(task_eval_samples=2 if scored else 0))
    summary = json.loads((tmp_path / "run" / "goft_run.json").read_text())
    assert summary["data"]["columns"] == TYPES[name][2]
    if stage.name == "sft" and scored:  # the greedy answer to each prompt, against the last turn or the completion
        assert "task/after/exact_match" in summary["metrics"], summary["metrics"]


def test_a_hub_style_folder_trains_on_its_train_split_and_evaluation_rebuilds_its_test_split(assets, tmp_path):
    folder = tmp_path / "ultrafeedback"
    (folder / "data").mkdir(parents=True)
    for split, count in (("train_prefs", 12), ("test_prefs", 4), ("train_gen", 3)):
        rows = [TYPES["dpo-ultrafeedback"][1](i) for i in range(count)]
        Dataset.from_list(rows).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    output_dir = tmp_path / "run"
    trains_and_loads(assets, "dpo", folder, output_dir, *recipe_flags(dataset_splits=["train_prefs", "test_prefs"]))
    test = held_out_split(output_dir)
    record = json.loads((output_dir / "goft_run.json").read_text())["data"]
    assert len(test) == 4 and rows_fingerprint(test) == record["split_sha256"]["test"]
    assert record["dataset_splits"] == ["train_prefs", "test_prefs"]
