"""The task metrics a recipe prints before and after training, on held-out examples."""

import contextlib

import torch


def _normalise(text: str) -> str:
    return text.strip().rstrip(".").strip().casefold()


@torch.no_grad()
def exact_match(model, tokenizer, dataset, batch_size: int = 16) -> float:
    """Share of conversations whose last assistant turn the model reproduces exactly when answering greedily."""
    prompts, answers = [], []
    for messages in dataset["messages"]:
        if not messages or messages[-1]["role"] != "assistant":
            continue
        prompts.append(tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True))
        answers.append(messages[-1]["content"])
    if not prompts:
        return float("nan")
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    hits = 0
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"])
                          for a in answers[start:start + batch_size])
            generated = model.generate(**batch, max_new_tokens=longest + 4, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            hits += sum(_normalise(t) == _normalise(a) for t, a in zip(texts, answers[start:start + batch_size]))
    finally:
        model.train(was_training)
        tokenizer.padding_side = padding_side
    return hits / len(prompts)


def sft_task_metrics(trainer, dataset, adapter_enabled: bool) -> dict:
    """Exact match on `dataset`, with the adapter on or off (off = the base model)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    context = contextlib.nullcontext() if adapter_enabled else model.disable_adapter()
    with context:
        return {"exact_match": exact_match(model, trainer.processing_class, dataset)}


def dpo_task_metrics(trainer, dataset) -> dict:
    """Held-out implicit-reward margin and accuracy (chosen beats rejected) of the policy against its reference."""
    metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix="eval")
    return {"reward_margin": metrics.get("eval_rewards/margins", float("nan")),
            "reward_accuracy": metrics.get("eval_rewards/accuracies", float("nan")),
            "chosen_logratio": metrics.get("eval_rewards/chosen", float("nan"))}
