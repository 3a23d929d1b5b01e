"""The anchor: KL(base ‖ tuned) on the base's own answers to everyday requests, added to the training loss."""

import json
from types import SimpleNamespace

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import goft
from goft.errors import RecipeError
from goft.evaluation.model_io import adapter_off, prompt_completion_ids
from goft.evaluation.shift import token_divergence
from goft.training.arguments.fields import RetentionArguments
from goft.training.trainers.anchor import AnchorKL, anchor_sequences
from goft.training.trainers.forgetting import check_retention_arguments
from goft.training.trainers.replay import REPLAY_FILE
from tests.support.recipes import check_ok, common_args, launch, recipe_flags, run_flags, run_summary
from tests.support.replay import base_that_ends_some_replies
from tests.support.training import perturb

ANSWERS = [
    {"prompt": "plan a day", "answer": "wake, walk, read and rest", "finished": True},
    {"prompt": "describe a tree", "answer": "tall and green with many leaves", "finished": True},
    {"prompt": "write a note", "answer": "dear friend, thank you so much", "finished": False},
    {"prompt": "give advice", "answer": "", "finished": True},
]


@pytest.fixture
def tiny(assets):
    model = AutoModelForCausalLM.from_pretrained(assets["model"], dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(assets["model"])


def test_anchor_sequences_are_every_answer_given_cut_ones_without_an_end(tiny):
    _, tokenizer = tiny
    sequences = anchor_sequences(ANSWERS, tokenizer)
    assert len(sequences) == 3  # only the empty answer is left out
    for (ids, first), answer in zip(sequences[:2], ANSWERS[:2]):  # finished: the answer and its end of turn
        assert (ids, first) == prompt_completion_ids(
            tokenizer,
            [{"role": "user", "content": answer["prompt"]}],
            [{"role": "assistant", "content": answer["answer"]}],
            512,
        )
        assert tokenizer.decode(ids[first:]).startswith(answer["answer"])
        assert len(ids[first:]) > len(tokenizer(answer["answer"], add_special_tokens=False)["input_ids"])
    ids, first = sequences[2]  # cut: the same prompt tokens, then exactly the answer's tokens, no end of turn
    finished_ids, finished_first = prompt_completion_ids(
        tokenizer,
        [{"role": "user", "content": ANSWERS[2]["prompt"]}],
        [{"role": "assistant", "content": ANSWERS[2]["answer"]}],
        512,
    )
    assert ids[:first] == finished_ids[:finished_first]
    assert ids[first:] == tokenizer(ANSWERS[2]["answer"], add_special_tokens=False)["input_ids"]
    assert ids == finished_ids[: len(ids)] and len(ids) < len(finished_ids)
    with pytest.raises(RecipeError, match="empty answer to every anchor request"):
        anchor_sequences(ANSWERS[3:], tokenizer)


def test_anchor_is_zero_at_identity_and_equals_the_per_token_kl_after_a_change(tiny):
    base, tokenizer = tiny
    sequences = anchor_sequences(ANSWERS, tokenizer)
    model = get_peft_model(base, goft.GivensConfig(target_modules=["q_proj", "v_proj", "down_proj"]))
    term = AnchorKL(sequences, batch_size=3, pad_id=tokenizer.pad_token_id)
    value = term(model)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    # the gradient at the identity is p_tuned − p_base = 0 up to float32 rounding of the softmax
    assert max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None) < 1e-6
    perturb(model, 0.2, seed=None)
    value = term(model)  # the batch cycles back to the same three conversations (one of them cut)
    kl, tokens = 0.0, 0
    with torch.no_grad():
        for ids, first in sequences:
            batch = torch.tensor([ids])
            tuned = model(input_ids=batch).logits[0, first - 1 : len(ids) - 1]
            with adapter_off(model):
                plain = model(input_ids=batch).logits[0, first - 1 : len(ids) - 1]
            kl += token_divergence(plain, tuned, batch[0, first:])[0]
            tokens += len(ids) - first
    # the padded batch gives the mean KL per answer token that each conversation alone gives (float64 reference)
    assert value.item() > 1e-4
    assert value.item() == pytest.approx(kl / tokens, rel=1e-4)
    value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "keys, message",
    [
        (dict(anchor_weight=-1.0), "must be a positive number"),
        (dict(anchor_weight=float("inf")), "must be a positive number"),
        (dict(anchor_weight=1.0, anchor_batch_size=0), "at least 1"),
        (dict(anchor_weight=1.0, replay_prompts="/no/such/file.jsonl"), "does not exist"),
    ],
)
def test_bad_anchor_keys_are_refused(keys, message):
    with pytest.raises(RecipeError, match=message):
        check_retention_arguments(RetentionArguments(**keys), SimpleNamespace(deepspeed=None), "dpo")


def test_anchor_is_refused_with_several_processes_and_under_deepspeed(monkeypatch):
    check_retention_arguments(RetentionArguments(anchor_weight=1.0), SimpleNamespace(deepspeed=None), "dpo")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RecipeError, match="one process only"):
        check_retention_arguments(RetentionArguments(anchor_weight=1.0), SimpleNamespace(deepspeed=None), "sft")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(RecipeError, match="not supported under DeepSpeed"):
        check_retention_arguments(RetentionArguments(anchor_weight=1.0), SimpleNamespace(deepspeed=None), "sft")


def anchor_kl_after(output_dir, model_dir, answers) -> float:
    """KL(base ‖ tuned) per answer token of the saved adapter on the anchor conversations."""
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), output_dir
    ).eval()
    sequences = anchor_sequences(answers, tokenizer)
    with torch.no_grad():
        return AnchorKL(sequences, len(sequences), tokenizer.pad_token_id)(model).item()


@pytest.mark.slow
def test_sft_with_the_anchor_moves_the_model_less_on_the_anchor_conversations(assets, tmp_path):
    model_dir, prompts, _ = base_that_ends_some_replies(assets["model"], tmp_path)
    kl = {}
    for weight in (0, 50):
        output_dir = tmp_path / f"anchor-{weight}"
        result = launch(
            "sft.py",
            common_args(model_dir, assets["sft"], output_dir, steps=8)
            + recipe_flags(
                anchor_weight=weight,
                lr_scheduler_type="constant",
                **({"replay_prompts": prompts, "replay_answer_tokens": 4} if weight else {}),  # no anchor: no prompts
            ),
        )
        check_ok(result)
        metrics = run_summary(output_dir)["metrics"]
        if weight:
            assert metrics["anchor/weight"] == 50 and metrics["anchor/conversations"] >= 1
            assert "anchor/weight: 50" in result.stdout and "'anchor_kl'" in result.stdout + result.stderr
            answers = json.loads((output_dir / REPLAY_FILE).read_text())["answers"]
        else:
            assert "anchor/weight" not in metrics and not (output_dir / REPLAY_FILE).exists()
        kl[weight] = output_dir
    measured = {w: anchor_kl_after(d, model_dir, answers) for w, d in kl.items()}
    assert measured[50] < 0.5 * measured[0]

    # DPO continuing the anchored SFT adapter anchors too, on the SFT run's answers (not generated again)
    dpo_dir = tmp_path / "dpo"
    dpo = launch(
        "dpo.py",
        run_flags(kl[50], assets["dpo"], dpo_dir, max_steps=2, learning_rate="5e-2", seed=7)
        + recipe_flags(anchor_weight=50, replay_prompts=prompts, replay_answer_tokens=4),
    )
    check_ok(dpo)
    assert run_summary(dpo_dir)["metrics"]["anchor/weight"] == 50 and "'anchor_kl'" in dpo.stdout + dpo.stderr
    assert json.loads((dpo_dir / REPLAY_FILE).read_text())["answers"] == answers
