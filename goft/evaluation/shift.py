"""Distribution shift on general text: how far an adapter moved the next-token distribution (KL against the base,
perplexity with the adapter off and on) on prose it was never trained on."""

import math

import torch

from goft.errors import RecipeError
from goft.evaluation.assets import read_jsonl
from goft.evaluation.model_io import adapter_off, model_device, scoring_mode

POSITIONS = 256  # token positions whose full-vocabulary log-probabilities are held at once


def load_general_text(path) -> list[str]:
    """The paragraphs of a JSON Lines file with one `{"text": ...}` object a line."""
    texts = []
    for number, record in read_jsonl(path, "general-text"):
        if "text" not in record:
            raise RecipeError(
                f"Line {number} of the general-text file {str(path)!r} has no `text` column; every "
                'line must be an object like {"text": "..."}.'
            )
        if not isinstance(record["text"], str) or not record["text"].strip():
            raise RecipeError(
                f"Line {number} of the general-text file {str(path)!r}: `text` must be a non-empty string."
            )
        texts.append(record["text"])
    return texts


def token_divergence(
    base_logits: torch.Tensor, tuned_logits: torch.Tensor, targets: torch.Tensor
) -> tuple[float, float, float]:
    """Sums over positions (rows of the logits) of KL(p_base ‖ p_tuned), and of the negative log-likelihood of
    `targets` under the base and the tuned model, in float64, a block of positions at a time."""
    kl = nll_base = nll_tuned = 0.0
    for first in range(0, targets.numel(), POSITIONS):
        part = slice(first, first + POSITIONS)
        log_base = torch.log_softmax(base_logits[part].double(), dim=-1)
        log_tuned = torch.log_softmax(tuned_logits[part].double(), dim=-1)
        # KL(p_b ‖ p_t) = Σ_v p_b(v) · (log p_b(v) − log p_t(v)), summed over positions here
        kl += (log_base.exp() * (log_base - log_tuned)).sum().item()
        picked = targets[part].unsqueeze(1)
        nll_base -= log_base.gather(1, picked).sum().item()
        nll_tuned -= log_tuned.gather(1, picked).sum().item()
    return kl, nll_base, nll_tuned


class BaseLogitsCache:
    """The base model's logits on the general text, batch by batch, kept for the next adapter while they fit in
    `budget_bytes` (beyond that, recomputed). Reuse is exact: a disabled adapter runs the base layers alone, and a
    batch is reused only for identical token ids."""

    def __init__(self, budget_bytes: int = 1 << 30):
        self.budget_bytes, self.used_bytes = budget_bytes, 0
        self.batches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def logits(self, index: int, ids: torch.Tensor, compute) -> torch.Tensor:
        cached = self.batches.get(index)
        if cached is not None and torch.equal(cached[0], ids):
            return cached[1]
        logits = compute()
        size = logits.numel() * logits.element_size()
        if cached is None and self.used_bytes + size <= self.budget_bytes:
            self.batches[index] = (ids.clone(), logits)
            self.used_bytes += size
        return logits


@torch.no_grad()
def general_text_shift(
    model,
    tokenizer,
    texts: list[str],
    max_length: int = 256,
    batch_size: int = 4,
    base_cache: BaseLogitsCache | None = None,
) -> dict:
    """How far the adapter moved the next-token distribution on `texts`, per predicted (non-padding) token:
    mean KL(p_base ‖ p_tuned), and perplexity with the adapter off and on. The base is the same peft model with
    its adapter disabled, batch by batch; `base_cache` keeps those logits for the next adapter when they fit."""
    if not texts:
        raise RecipeError("No general text to measure the output shift on.")
    device = model_device(model)
    kl = nll_base = nll_tuned = 0.0
    tokens = 0
    with scoring_mode(model, tokenizer):
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            ).to(device)
            ids, mask = batch["input_ids"], batch["attention_mask"].bool()
            keep = mask[:, :-1] & mask[:, 1:]  # position t predicts token t + 1; both must be real tokens
            targets = ids[:, 1:][keep]
            tuned_logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1][keep]

            def base_logits_of_batch(ids=ids, mask=mask, keep=keep):
                with adapter_off(model):
                    return model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1][keep]

            cache = base_cache or BaseLogitsCache(budget_bytes=0)
            base_logits = cache.logits(start, ids, base_logits_of_batch)
            sums = token_divergence(base_logits, tuned_logits, targets)
            kl, nll_base, nll_tuned = kl + sums[0], nll_base + sums[1], nll_tuned + sums[2]
            tokens += targets.numel()
    if tokens == 0:
        raise RecipeError("The general texts are too short: no token to predict (each needs at least two tokens).")
    # perplexity = exp(mean negative log-likelihood of the predicted tokens)
    base_ppl, tuned_ppl = math.exp(nll_base / tokens), math.exp(nll_tuned / tokens)
    return {
        "kl_base_tuned": kl / tokens,
        "perplexity_base": base_ppl,
        "perplexity_tuned": tuned_ppl,
        "perplexity_change": tuned_ppl - base_ppl,
        "tokens": tokens,
    }
