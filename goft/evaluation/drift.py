"""Drift on open instructions (explain, list, write): how far the tuned model's answers move from the base's own.

Two measures: the KL(base ‖ tuned) per token along the base's own greedy answers (teacher-forced, so the tuned model
is scored on exactly what the base would say), and the length of each model's greedy answer in tokens."""

from dataclasses import dataclass, field

import torch

from goft.errors import RecipeError
from goft.evaluation.assets import read_jsonl
from goft.evaluation.base_replies import base_answers_to
from goft.evaluation.model_io import (
    adapter_off,
    greedy_answers,
    model_device,
    prompt_completion_ids,
    scoring_mode,
)
from goft.evaluation.shift import BaseLogitsCache, token_divergence

ANSWER_TOKENS = 96  # long enough for a few sentences; a longer answer is cut at this many tokens


@dataclass(frozen=True)
class BaseAnswers:
    """The base model's greedy answers to the instructions, computed once and reused for every adapter, with the
    base's logits along them (kept for the next adapter while they fit in `logits`' budget)."""

    instructions: list[str]
    answers: list[str]
    lengths: list[int]
    logits: BaseLogitsCache = field(default_factory=BaseLogitsCache, compare=False, repr=False)


def load_instructions(path) -> list[str]:
    """The `instruction` of each line of a JSON Lines file."""
    instructions = []
    for number, record in read_jsonl(path, "open-instruction"):
        if not isinstance(record.get("instruction"), str) or not record["instruction"].strip():
            raise RecipeError(
                f"Line {number} of the open-instruction file {str(path)!r} needs a non-empty `instruction` string."
            )
        instructions.append(record["instruction"])
    return instructions


def _conversations(instructions: list[str]) -> list[list[dict]]:
    return [[{"role": "user", "content": text}] for text in instructions]


def _token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_lengths(model, tokenizer, instructions: list[str], batch_size: int = 16) -> tuple[list[str], list[int]]:
    """The model's greedy answers (run as given) and their lengths in tokens."""
    answers = greedy_answers(model, tokenizer, _conversations(instructions), ANSWER_TOKENS, batch_size)
    return answers, [_token_count(tokenizer, a) for a in answers]


def base_answers(model, tokenizer, instructions: list[str], batch_size: int = 16) -> BaseAnswers:
    """The base's greedy answers; `model` is the base itself or a peft model, whose adapter is switched off. Computed
    once per base and instruction set (`base_replies`)."""
    answers = base_answers_to(model, tokenizer, _conversations(instructions), ANSWER_TOKENS, batch_size)
    return BaseAnswers(list(instructions), answers, [_token_count(tokenizer, a) for a in answers])


@torch.no_grad()
def answer_drift(model, tokenizer, base: BaseAnswers, max_length: int = 256) -> dict:
    """KL(base ‖ tuned) per token on the base's own answers, and the mean answer length of base and tuned."""
    device = model_device(model)
    kl = tokens = 0.0
    with scoring_mode(model, tokenizer):
        for index, (instruction, answer) in enumerate(zip(base.instructions, base.answers)):
            prompt = [{"role": "user", "content": instruction}]
            ids, first = prompt_completion_ids(
                tokenizer, prompt, [{"role": "assistant", "content": answer}], max_length
            )
            ids = torch.tensor([ids], device=device)
            tuned = model(input_ids=ids).logits[0, first - 1 : -1]

            def base_logits(ids=ids, first=first):
                with adapter_off(model):
                    return model(input_ids=ids).logits[0, first - 1 : -1]

            reference = base.logits.logits(index, ids, base_logits)
            kl += token_divergence(reference, tuned, ids[0, first:])[0]
            tokens += ids.shape[1] - first
    _, lengths = answer_lengths(model, tokenizer, base.instructions)
    base_length, tuned_length = sum(base.lengths) / len(base.lengths), sum(lengths) / len(lengths)
    return {
        "answer_kl_base_tuned": kl / tokens,
        "answer_length_base": base_length,
        "answer_length_tuned": tuned_length,
        "answer_length_ratio": tuned_length / max(base_length, 1e-9),
        "instructions": len(base.instructions),
    }
