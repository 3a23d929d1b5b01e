"""Task metrics on held-out examples: exact match of greedy answers and the answers' NLL per token (SFT data), or
implicit-reward accuracy and margin (preference pairs); and the before/after metrics a recipe prints."""

import math

import torch

from goft.data.stages import PREFERENCE
from goft.errors import RecipeError
from goft.evaluation.base_replies import base_answers_to
from goft.evaluation.model_io import (
    adapter_off,
    completion_logps,
    greedy_answers,
    prompt_completion_ids,
    scoring_mode,
)

EXTRA_TOKENS = 4  # generated beyond the longest reference answer of a batch, so that a longer reply is not cut to fit


def normalise_label(text: str) -> str:
    return text.strip().rstrip(".").strip().casefold()


def answer_pairs(rows) -> list[tuple[object, object]]:
    """(prompt, reference answer) of each SFT row that has an answer: a conversation's last assistant turn after the
    turns before it, or a prompt-completion row's completion (of a conversation, its last turn, after the prompt and
    the completion's earlier turns). Strings stay strings, turns lists of turns."""
    if "messages" in rows.column_names:
        return [(m[:-1], m[-1:]) for m in rows["messages"] if m and m[-1]["role"] == "assistant"]
    pairs = []
    for prompt, completion in zip(rows["prompt"], rows["completion"]):
        if isinstance(completion, str):
            pairs.append((prompt, completion))
        elif completion and completion[-1]["role"] == "assistant":
            pairs.append((list(prompt) + list(completion[:-1]), completion[-1:]))
    return pairs


def _text(answer) -> str:
    return answer if isinstance(answer, str) else answer[-1]["content"]


def exact_match(model, tokenizer, dataset, batch_size: int = 16, of_base: bool = False) -> float:
    """Share of rows whose answer (the last assistant turn, or the completion) the model reproduces exactly when
    answering greedily; with `of_base`, the base of the peft `model` answers (adapter off, its answers computed once
    per base and rows: `base_replies`)."""
    rows = answer_pairs(dataset)
    if not rows:
        return float("nan")
    hits = 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        answers = [_text(answer) for _, answer in batch]
        longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
        answer = base_answers_to if of_base else greedy_answers
        replies = answer(model, tokenizer, [prompt for prompt, _ in batch], longest + EXTRA_TOKENS, batch_size)
        hits += sum(normalise_label(r) == normalise_label(a) for r, a in zip(replies, answers))
    return hits / len(rows)


def preference_metrics(model, tokenizer, rows, max_length: int = 256, batch_size: int = 4) -> dict:
    """DPO-style implicit rewards (β = 1) of the tuned model against the base on preference pairs."""
    chosen = [prompt_completion_ids(tokenizer, r["prompt"], r["chosen"], max_length) for r in rows]
    rejected = [prompt_completion_ids(tokenizer, r["prompt"], r["rejected"], max_length) for r in rows]
    with scoring_mode(model, tokenizer):
        tuned_c = completion_logps(model, tokenizer, chosen, batch_size)
        tuned_r = completion_logps(model, tokenizer, rejected, batch_size)
        with adapter_off(model):
            base_c = completion_logps(model, tokenizer, chosen, batch_size)
            base_r = completion_logps(model, tokenizer, rejected, batch_size)
    # implicit reward r(x, y) = log p_tuned(y|x) − log p_base(y|x); margin = r(x, chosen) − r(x, rejected)
    margins = (tuned_c - base_c) - (tuned_r - base_r)
    # preference loss = mean −log σ(margin) (the DPO loss with β = 1): log 2 at the base, lower once chosen wins
    loss = torch.nn.functional.softplus(-margins.double()).mean().item()
    return {
        "task": "preference",
        "samples": len(chosen),
        "preference_loss_base": math.log(2.0),
        "preference_loss_tuned": loss,
        "preference_accuracy": (margins > 0).double().mean().item(),
        "reward_margin": margins.mean().item(),
        "chosen_preferred_base": (base_c > base_r).double().mean().item(),
        "chosen_preferred_tuned": (tuned_c > tuned_r).double().mean().item(),
    }


def answer_nll(model, tokenizer, rows, max_length: int = 256, batch_size: int = 4) -> dict:
    """Mean negative log-likelihood per token of the reference answers (`answer_pairs`) given their prompts, with
    the adapter off and on: a task measure that does not saturate."""
    sequences = [prompt_completion_ids(tokenizer, prompt, answer, max_length) for prompt, answer in answer_pairs(rows)]
    if not sequences:
        return {}
    tokens = sum(len(ids) - first for ids, first in sequences)
    with scoring_mode(model, tokenizer):
        tuned = completion_logps(model, tokenizer, sequences, batch_size).sum().item()
        with adapter_off(model):
            base = completion_logps(model, tokenizer, sequences, batch_size).sum().item()
    # NLL per answer token = −Σ log p(answer token | prompt, earlier answer tokens) / number of answer tokens
    return {"answer_nll_base": -base / tokens, "answer_nll_tuned": -tuned / tokens}


def task_kind(columns) -> str:
    if "messages" in columns or all(c in columns for c in ("prompt", "completion")):
        return "sft"
    if all(c in columns for c in PREFERENCE.columns):
        return "preference"
    raise RecipeError(
        f"Cannot score a task on columns {list(columns)}: need conversations (`messages`) or prompt-completion "
        "rows (SFT: the answer is the last assistant turn, or the completion), or preference pairs (`prompt`, "
        "`chosen`, `rejected`); language modeling rows (`text`) have no answer to score (set the task samples to 0)."
    )


def task_metrics(model, tokenizer, test_dataset, n: int, max_length: int = 256) -> dict:
    """The first `n` held-out rows: exact match of the greedy answer with the adapter off and on (SFT data:
    `messages`, or `prompt` and `completion`), or preference accuracy and reward margin (prompt / chosen / rejected)."""
    rows = test_dataset.select(range(min(n, len(test_dataset))))
    if len(rows) == 0:
        raise RecipeError("No held-out rows to score the task on.")
    if task_kind(test_dataset.column_names) == "sft":
        tuned = exact_match(model, tokenizer, rows)
        base = exact_match(model, tokenizer, rows, of_base=True)
        return {
            "task": "exact_match",
            "samples": len(rows),
            "exact_match_base": base,
            "exact_match_tuned": tuned,
            **answer_nll(model, tokenizer, rows, max_length=max_length),
        }
    return preference_metrics(model, tokenizer, rows, max_length=max_length)


def sft_task_metrics(trainer, dataset, adapter_enabled: bool) -> dict:
    """Exact match on `dataset`, with the adapter on or off (off = the base model)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {"exact_match": exact_match(model, trainer.processing_class, dataset, of_base=not adapter_enabled)}


def dpo_task_metrics(trainer, dataset) -> dict:
    """Held-out implicit-reward margin and accuracy (chosen beats rejected) of the policy against its reference."""
    metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix="eval")
    return {
        "reward_margin": metrics.get("eval_rewards/margins", float("nan")),
        "reward_accuracy": metrics.get("eval_rewards/accuracies", float("nan")),
        "chosen_logratio": metrics.get("eval_rewards/chosen", float("nan")),
    }
