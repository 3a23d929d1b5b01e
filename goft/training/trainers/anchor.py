"""The anchor: a loss term that keeps the model's next-token distributions where the base model had them, on
requests that are not the task.

With `anchor_weight` λ > 0, every training step adds λ · KL(p_base ‖ p_tuned), the mean per token over the answer
tokens of a batch of anchor conversations: everyday requests and short factual questions (`replay_prompts`) with the
base model's own greedy answers, teacher-forced. The base's distribution comes from the same model with its adapter
off (no gradient), so the term is exactly zero at the identity adapter and pulls only against change. Unlike replay
(training on the base's answers as targets, which also sharpens them), the anchor matches the base's full
distribution at every position.
Its cost per step: one forward pass without the adapter and one forward and backward pass with it, on
`anchor_batch_size` conversations.
"""

from __future__ import annotations

import torch

from goft.errors import RecipeError
from goft.evaluation.model_io import adapter_off, prompt_completion_ids


def anchor_sequences(answers: list[dict], tokenizer) -> list[tuple[list[int], int]]:
    """(token ids, index of the first answer token) of each non-empty replay answer. A finished answer keeps its
    end-of-turn token (when to stop is part of the base's behaviour); an answer cut at `replay_answer_tokens` is
    teacher-forced as far as it goes, without one: the base's distribution at each of its tokens is still the base's."""
    sequences = []
    for answer in answers:
        if not answer["answer"]:
            continue
        prompt = [{"role": "user", "content": answer["prompt"]}]
        if answer["finished"]:
            sequences.append(
                prompt_completion_ids(tokenizer, prompt, [{"role": "assistant", "content": answer["answer"]}], 10**9)
            )
            continue
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        sequences.append(
            (prompt_ids + tokenizer(answer["answer"], add_special_tokens=False)["input_ids"], len(prompt_ids))
        )
    if not sequences:
        raise RecipeError("The base gave an empty answer to every anchor request; check `replay_prompts`.")
    return sequences


class AnchorKL:
    """`value(model)`: the mean KL(p_base ‖ p_tuned) per answer token on the next `batch_size` anchor conversations
    (taken in turn, cycling), differentiable in the adapter's parameters."""

    def __init__(self, sequences: list[tuple[list[int], int]], batch_size: int, pad_id: int):
        self.sequences, self.batch_size, self.pad_id = sequences, batch_size, pad_id
        self.position = 0

    def next_batch(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = [self.sequences[(self.position + i) % len(self.sequences)] for i in range(self.batch_size)]
        self.position = (self.position + self.batch_size) % len(self.sequences)
        longest = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        scored = torch.zeros(len(batch), longest - 1, dtype=torch.bool)  # positions predicting an answer token
        for row, (tokens, first) in enumerate(batch):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            attention[row, : len(tokens)] = 1
            scored[row, first - 1 : len(tokens) - 1] = True
        return ids.to(device), attention.to(device), scored.to(device)

    def __call__(self, model) -> torch.Tensor:
        model = getattr(model, "module", model)  # the peft model inside a DDP wrapper
        device = next(model.parameters()).device
        ids, attention, scored = self.next_batch(device)
        with torch.no_grad(), adapter_off(model):
            base = model(input_ids=ids, attention_mask=attention).logits[:, :-1][scored]
        tuned = model(input_ids=ids, attention_mask=attention).logits[:, :-1][scored]
        log_base = torch.log_softmax(base.float(), dim=-1)
        log_tuned = torch.log_softmax(tuned.float(), dim=-1)
        # KL(p_b ‖ p_t) = Σ_v p_b(v) (log p_b(v) − log p_t(v)), averaged over the answer tokens
        return (log_base.exp() * (log_base - log_tuned)).sum(dim=-1).mean()
