"""`hub_strategy` as the recipe writes it: `every_save` pushes each saved adapter, `end` the finished run only, and the
strategies that would publish whole checkpoints are refused before any work."""

from types import SimpleNamespace

import pytest
from transformers import TrainingArguments

from goft.errors import RecipeError
from goft.training.publish import hub


def arguments(tmp_path, strategy):
    return TrainingArguments(output_dir=str(tmp_path), hub_strategy=strategy, use_cpu=True)


@pytest.mark.parametrize(
    "strategy, named, expected",
    [("every_save", True, "every_save"), ("end", True, "end"), ("every_save", False, "end")],
)
def test_the_strategy_the_recipe_writes(tmp_path, strategy, named, expected):
    assert hub.hub_strategy(arguments(tmp_path, strategy), named) == expected


@pytest.mark.parametrize("strategy", hub.CHECKPOINT_STRATEGIES)
def test_checkpoint_strategies_are_refused(tmp_path, strategy):
    with pytest.raises(RecipeError, match=f"`hub_strategy: {strategy}` pushes whole checkpoints"):
        hub.hub_strategy(arguments(tmp_path, strategy), named=True)


def test_every_save_pushes_each_saved_adapter_from_the_main_process(tmp_path, monkeypatch):
    pushed = []
    monkeypatch.setattr(
        hub, "push_run", lambda folder, args, token, commit_message: pushed.append((folder, commit_message))
    )
    args = arguments(tmp_path, "every_save")
    pushes = hub.AdapterPushes(args, "hf_token", "sft")
    for step, main in ((4, True), (8, True), (8, False)):
        pushes.on_save(args, SimpleNamespace(is_world_process_zero=main, global_step=step), None)
    assert pushed == [
        (str(tmp_path / "checkpoint-4"), "goft sft: adapter at step 4"),
        (str(tmp_path / "checkpoint-8"), "goft sft: adapter at step 8"),
    ]


def test_a_failed_push_during_training_is_a_warning(tmp_path, monkeypatch, caplog):
    def fail(*args, **kwargs):
        raise RecipeError("the Hub said no")

    monkeypatch.setattr(hub, "push_run", fail)
    args = arguments(tmp_path, "every_save")
    hub.AdapterPushes(args, None, "dpo").on_save(args, SimpleNamespace(is_world_process_zero=True, global_step=2), None)
    assert "Pushing the adapter of step 2 failed: the Hub said no" in caplog.text
