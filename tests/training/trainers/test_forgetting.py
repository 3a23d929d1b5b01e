"""Forgetting around and during a recipe run: retention before and after, the forgetting budget, the task target."""

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from goft.errors import RecipeError
from goft.evaluation.knowledge import normalise_answer
from goft.evaluation.model_io import greedy_answers
from goft.training.arguments.fields import RetentionArguments
from goft.training.trainers.forgetting import check_retention_arguments
from tests.support.data import write_jsonl
from tests.support.recipes import check_ok, common_args, launch, recipe_flags, run_flags, run_summary

TEXTS = [
    "The old lighthouse keeper climbed the stairs every evening to light the lamp for passing ships.",
    "Bread rises because yeast turns sugar into gas, and the gas is trapped by the stretchy dough.",
    "In spring the river swells with melted snow and spreads across the low meadows.",
]
# After `common_args`: a larger, constant learning rate (a schedule independent of max_steps), no checkpoints on the way
CONSTANT_RATE = {"learning_rate": "5e-2", "lr_scheduler_type": "constant", "save_steps": 100}


@pytest.fixture(scope="module")
def known_questions(assets):
    """A question file the tiny random base answers entirely correctly: each accepted answer is the first word of the
    base's own greedy reply (its retention is then exactly 1 before training)."""
    model = AutoModelForCausalLM.from_pretrained(assets["model"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(assets["model"])
    asked = [f"fact {i}?" for i in range(16)]
    replies = greedy_answers(model, tokenizer, [[{"role": "user", "content": q}] for q in asked], 24)
    rows = [
        {"id": f"q{i}", "topic": "tiny", "question": q, "answers": [normalise_answer(r).split()[0]]}
        for i, (q, r) in enumerate(zip(asked, replies))
        if normalise_answer(r).split()
    ]
    assert len(rows) >= 8
    return write_jsonl(rows, assets["root"] / "known-questions.jsonl"), len(rows)


@pytest.mark.slow
def test_sft_then_dpo_report_retention_before_and_after(assets, known_questions, tmp_path):
    questions, n = known_questions
    sft_dir = tmp_path / "sft"
    sft = launch(
        "sft.py",
        common_args(assets["model"], assets["sft"], sft_dir)
        + recipe_flags(retention_eval=True, retention_questions=questions),
    )
    check_ok(sft)
    metrics = run_summary(sft_dir)["metrics"]
    assert metrics["retention/before"] == 1.0  # the identity adapter answers exactly as the base does
    assert metrics["retention/known_to_base"] == n
    assert 0.0 <= metrics["retention/after"] <= 1.0
    assert metrics["retention/lost"] == round(n * (1 - metrics["retention/after"]))
    record = run_summary(sft_dir)["retention"]
    assert len(record["known_ids"]) == n and len(record["questions_sha256"]) == 64
    assert len(record["lost_ids"]) == metrics["retention/lost"] and set(record["lost_ids"]) <= set(record["known_ids"])
    assert "retention/before: 1" in sft.stdout and "retention/after:" in sft.stdout
    assert "retention/after" in (sft_dir / "README.md").read_text()

    dpo_dir = tmp_path / "dpo"
    dpo = launch(
        "dpo.py",
        run_flags(sft_dir, assets["dpo"], dpo_dir, max_steps=4, learning_rate="5e-2", logging_steps=None, seed=7)
        + recipe_flags(retention_eval=True, retention_questions=questions),
    )
    check_ok(dpo)
    dpo_metrics = run_summary(dpo_dir)["metrics"]
    # the DPO policy starts as the SFT adapter: its retention before is the SFT run's after, on the same questions
    assert dpo_metrics["retention/before"] == metrics["retention/after"]
    assert dpo_metrics["retention/known_to_base"] == n
    assert "retention/after" in dpo_metrics


@pytest.mark.slow
def test_forgetting_budget_stops_and_keeps_the_last_adapter_within_budget(assets, tmp_path):
    texts = write_jsonl([{"text": t} for t in TEXTS], tmp_path / "texts.jsonl")
    budget_dir = tmp_path / "budget"
    args = common_args(assets["model"], assets["sft"], budget_dir, steps=12) + recipe_flags(
        **CONSTANT_RATE, forgetting_budget=0.003, measure_steps=2, general_text=texts
    )
    result = launch("sft.py", args)
    check_ok(result)
    metrics = run_summary(budget_dir)["metrics"]
    stopped, kept = metrics["forgetting/stopped_at_step"], metrics["forgetting/kept_step"]
    assert metrics["forgetting/stopped_kl"] > 0.003 >= metrics["forgetting/kept_kl"]
    assert kept == stopped - 2 and metrics["global_step"] == stopped
    assert "forgetting budget: KL" in result.stdout and f"the one of step {kept}" in result.stdout
    assert "forgetting/stopped_at_step" in (budget_dir / "README.md").read_text()
    # the saved adapter is exactly the one of the kept step: a run of `kept` steps with the same seed (and a
    # constant learning rate, so that the schedule does not depend on max_steps) gives it
    plain_dir = tmp_path / "plain"
    check_ok(
        launch(
            "sft.py",
            common_args(assets["model"], assets["sft"], plain_dir, steps=kept) + recipe_flags(**CONSTANT_RATE),
        )
    )
    saved, reference = (load_file(d / "adapter_model.safetensors") for d in (budget_dir, plain_dir))
    assert saved.keys() == reference.keys()
    for key in saved:
        torch.testing.assert_close(saved[key], reference[key], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_task_target_stops_training_once_reached(assets, tmp_path):
    output_dir = tmp_path / "target"
    result = launch(
        "sft.py",
        common_args(assets["model"], assets["sft"], output_dir, steps=40)
        + recipe_flags(adapter="lora", lora_r=4, task_target_nll=5.45, measure_steps=2, task_eval_samples=4),
    )
    check_ok(result)
    metrics = run_summary(output_dir)["metrics"]
    reached = metrics["task_target/reached_at_step"]
    assert reached < 40 and metrics["global_step"] == reached and reached % 2 == 0
    assert metrics["task_target/last_measured_nll"] <= 5.45  # the base starts near ln(vocabulary) = 5.6 (training rows)


@pytest.mark.parametrize(
    "keys, message",
    [
        (dict(forgetting_budget=-1.0), "must be a positive KL"),
        (dict(forgetting_budget=0.1, measure_steps=0), "must be at least 1"),
        (dict(task_target_nll=0.0), "must be a positive NLL"),
        (dict(task_target_nll=float("inf")), "must be a positive NLL"),
        (dict(forgetting_budget=float("nan")), "must be a positive KL"),
        (dict(retention_eval=True, retention_questions="/"), "is a folder"),
        (dict(retention_eval=True, retention_questions="/no/such/file.jsonl"), "does not exist"),
        (dict(forgetting_budget=0.1, general_text="/no/such/file.jsonl"), "does not exist"),
    ],
)
def test_bad_retention_keys_are_refused(keys, message):
    with pytest.raises(RecipeError, match=message):
        check_retention_arguments(RetentionArguments(**keys), SimpleNamespace(deepspeed=None), "sft")


def test_task_target_is_sft_only_and_measures_are_refused_under_deepspeed(monkeypatch):
    with pytest.raises(RecipeError, match="is an SFT key"):
        check_retention_arguments(RetentionArguments(task_target_nll=0.5), SimpleNamespace(deepspeed=None), "dpo")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(RecipeError, match="not supported under DeepSpeed"):
        check_retention_arguments(RetentionArguments(forgetting_budget=0.1), SimpleNamespace(deepspeed=None), "sft")
    check_retention_arguments(RetentionArguments(retention_eval=True), SimpleNamespace(deepspeed=None), "sft")
