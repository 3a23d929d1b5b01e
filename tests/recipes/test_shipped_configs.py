"""The recipes shipped in `recipes/configs/` parse as their scripts parse them: every key known, every value of its
type, every file they name present. A typo in a shipped config fails here, not an hour into someone's run."""

from pathlib import Path

import pytest
from trl import DPOConfig, SFTConfig, TrlParser

from goft.comparison import CompareArguments, compare
from goft.training.arguments.cli import make_recipe_parser, parse_recipe
from tests.support.recipes import REPO

CONFIGS = sorted((REPO / "recipes" / "configs").rglob("*.yaml"))
STAGE_CONFIGS = [p for p in CONFIGS if not p.name.startswith("compare")]
COMPARE_CONFIGS = [p for p in CONFIGS if p.name.startswith("compare")]
TRAINING_CONFIGS = {"sft": SFTConfig, "dpo": DPOConfig}


def stage_of(path: Path) -> str:
    stage = path.name.split("_", 1)[0]
    assert stage in TRAINING_CONFIGS, f"{path.name}: a stage recipe's name starts with sft_ or dpo_"
    return stage


def test_the_configs_are_found():
    assert len(STAGE_CONFIGS) >= 4 and len(COMPARE_CONFIGS) >= 3


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_stage_recipe_parses(path, monkeypatch):
    monkeypatch.chdir(REPO)  # the configs name their data relative to the repository, as the README runs them
    data, training, _, adapter, retention, recipe_yaml = parse_recipe(
        make_recipe_parser(TRAINING_CONFIGS[stage_of(path)]), ["--config", str(path)]
    )
    assert Path(data.dataset_name).is_file()
    assert training.learning_rate > 0 and training.max_steps > 0 and training.per_device_train_batch_size > 0
    assert training.output_dir.startswith("runs/")  # demo outputs stay in the ignored runs/ folder
    assert recipe_yaml


# each plan reads its base model's config (seconds): compare.yaml's in the inner loop, the others in the full run
@pytest.mark.parametrize(
    "path",
    [p if p.name == "compare.yaml" else pytest.param(p, marks=pytest.mark.slow) for p in COMPARE_CONFIGS],
    ids=lambda p: p.name,
)
def test_every_shipped_comparison_plans(path, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(REPO)
    (args,) = TrlParser((CompareArguments,)).parse_args_and_config(
        args=["--config", str(path), "--output_dir", str(tmp_path / "comparison"), "--plan_only", "true"]
    )
    parsers = {stage: make_recipe_parser(config) for stage, config in TRAINING_CONFIGS.items()}
    assert compare(args, {stage: REPO / "recipes" / f"{stage}.py" for stage in TRAINING_CONFIGS}, parsers) == []
    planned = capsys.readouterr().out
    assert "runs planned" in planned and "to train" in planned
    assert not (tmp_path / "comparison").exists()  # planning writes nothing
