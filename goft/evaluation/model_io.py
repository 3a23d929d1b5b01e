"""Running a (peft) model for evaluation: scoring mode, the adapter switched off, greedy answers, and the
log-probability of a completion given its prompt."""

import contextlib
import inspect

import torch
from torch import nn
from transformers import DynamicCache

from goft.errors import RecipeError


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def adapter_off(model):
    """A context in which the peft model runs its base layers alone (inside `merged_for_scoring`: the saved base
    weights swapped in, so that nothing is unmerged and re-merged)."""
    if not hasattr(model, "disable_adapter"):
        raise TypeError(f"Expected a peft model (with `disable_adapter`), got {type(model).__name__}.")
    merged = getattr(model, _MERGED_STATE, None)
    return merged.base_weights() if merged is not None else model.disable_adapter()


_MERGED_STATE = "_goft_merged_for_scoring"


class _MergedState:
    """Base and merged tensors of every adapted layer, swapped by reference (no copies, exact both ways)."""

    def __init__(self, tensors: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]]):
        self.tensors = tensors  # (parameter, its base data, its merged data)

    @contextlib.contextmanager
    def base_weights(self):
        for parameter, base, _ in self.tensors:
            parameter.data = base
        try:
            yield
        finally:
            for parameter, _, merged in self.tensors:
                parameter.data = merged


def _mergeable_layers(model) -> list | None:
    """The adapted layers when each one wraps a plain float nn.Linear (merging is then exact up to rounding), else
    None: quantized or other base layers are scored unmerged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    plain = all(
        type(getattr(m, "base_layer", None)) is nn.Linear and m.base_layer.weight.is_floating_point() for m in layers
    )
    return layers if layers and plain and not any(m.merged for m in layers) else None


@contextlib.contextmanager
def merged_for_scoring(model):
    """Score the active adapter at the base model's speed: merge it into the base weights for the duration and
    put the exact base weights back afterwards (the copies are kept, never recomputed by unmerging). Inside,
    `adapter_off(model)` swaps the base weights in. A model that cannot be merged exactly is scored as it is."""
    layers = _mergeable_layers(model) if hasattr(model, "disable_adapter") else None
    if layers is None:
        yield model
        return
    originals = [(p, p.data) for m in layers for p in m.base_layer.parameters(recurse=False)]
    for parameter, data in originals:
        parameter.data = data.clone()  # merging writes into these copies; the originals stay untouched
    try:
        for layer in layers:
            layer.merge()
        setattr(model, _MERGED_STATE, _MergedState([(p, base, p.data) for p, base in originals]))
        yield model
    finally:
        if hasattr(model, _MERGED_STATE):
            delattr(model, _MERGED_STATE)
        for parameter, base in originals:
            parameter.data = base
        for layer in layers:
            layer.merged_adapters.clear()


def adapter_switch(model, enabled: bool):
    """`adapter_off(model)` when `enabled` is false, else a context that changes nothing."""
    return contextlib.nullcontext() if enabled else adapter_off(model)


def as_base(model):
    """A context in which `model` runs as its base: a peft model with its adapters off, any other model as it is."""
    return adapter_off(model) if hasattr(model, "disable_adapter") else contextlib.nullcontext()


@contextlib.contextmanager
def scoring_mode(model, tokenizer, padding_side: str = "right"):
    """Eval mode, the given padding side and a pad token for the duration; everything restored afterwards."""
    was_training, side, pad = model.training, tokenizer.padding_side, tokenizer.pad_token
    model.eval()
    tokenizer.padding_side = padding_side
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        model.train(was_training)
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = pad


def end_token_ids(model, tokenizer) -> set[int]:
    """The ids that end a reply: the generation config's end-of-sequence ids and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.add(tokenizer.eos_token_id)
    return {i for i in ids if i is not None}


def rendered_prompts(tokenizer, conversations: list) -> list[str]:
    """Each conversation rendered with the chat template, generation prompt added; a string prompt as it is."""
    return [
        c if isinstance(c, str) else tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
        for c in conversations
    ]


# generation-config settings that change greedy decoding beyond the argmax, and their neutral values
GREEDY_NEUTRAL = {
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "num_beams": (None, 1),
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "sequence_bias": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "exponential_decay_length_penalty": (None,),
    "renormalize_logits": (None, False),
    "remove_invalid_values": (None, False),
    "stop_strings": (None,),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
    "penalty_alpha": (None,),
}


def _plain_greedy(model) -> bool:
    """Whether the model's generation config asks for nothing beyond the argmax (else `generate` decodes)."""
    config = getattr(model, "generation_config", None)
    return config is not None and all(getattr(config, key, None) in values for key, values in GREEDY_NEUTRAL.items())


def _keeps_last_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (most causal LMs of transformers do)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _continue_greedily(model, batch, max_new_tokens: int, ends: torch.Tensor) -> list[list[int]]:
    """Greedy decoding of a left-padded batch with the KV cache, each row dropped from the batch (and the cache) once
    it ended: what `generate(do_sample=False)` computes for each row, without the steps a finished row would spend
    on padding. The ids of each reply, up to and including its end token."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cache = DynamicCache(config=model.config)
    replies: list[list[int]] = [[] for _ in range(ids.shape[0])]
    rows = torch.arange(ids.shape[0], device=ids.device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)  # as generate numbers a left-padded prompt
    last_only = {"logits_to_keep": 1} if _keeps_last_logits(model) else {}  # the prompt's other logits are not needed
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, **last_only
    ).logits[:, -1]
    for step in range(max_new_tokens):
        tokens = logits.argmax(-1)
        for row, token in zip(rows.tolist(), tokens.tolist()):
            replies[row].append(token)
        going = ~torch.isin(tokens, ends)
        if step == max_new_tokens - 1 or not bool(going.any()):
            break
        if not bool(going.all()):
            kept = going.nonzero().squeeze(1)
            rows, tokens, mask = rows[kept], tokens[kept], mask[kept]
            cache.batch_select_indices(kept)
        mask = torch.cat((mask, mask.new_ones(mask.shape[0], 1)), dim=1)
        positions = mask.sum(-1, keepdim=True) - 1
        logits = model(
            input_ids=tokens[:, None], attention_mask=mask, position_ids=positions, past_key_values=cache
        ).logits[:, -1]
    return replies


@torch.no_grad()
def greedy_reply_ids(
    model, tokenizer, conversations: list, max_new_tokens: int, batch_size: int = 16
) -> list[list[int]]:
    """The token ids of the model's greedy reply to each conversation (rendered by `rendered_prompts`; a string prompt
    gets the tokenizer's special tokens), up to and including the first end token: batches of `batch_size`, left
    padding, the KV cache, finished rows dropped from their batch (`generate` decodes instead when the model's
    generation config asks for more than the argmax)."""
    generated_ids = []
    with scoring_mode(model, tokenizer, padding_side="left"):
        device = model_device(model)
        ends = sorted(end_token_ids(model, tokenizer))
        end_ids = torch.tensor(ends, device=device)
        prompts = rendered_prompts(tokenizer, conversations)
        plain = bool(prompts) and isinstance(conversations[0], str)
        own_loop = _plain_greedy(model)
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(
                prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=plain
            ).to(device)
            if own_loop:
                generated_ids += _continue_greedily(model, batch, max_new_tokens, end_ids)
                continue
            generated = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
            )[:, batch["input_ids"].shape[1] :]
            for row in generated.tolist():
                end = next((i for i, token in enumerate(row) if token in ends), None)
                generated_ids.append(row if end is None else row[: end + 1])  # after it, only padding
    return generated_ids


def greedy_replies(
    model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int = 16
) -> list[tuple[str, bool]]:
    """(reply, finished) per conversation: the model's greedy reply (`greedy_reply_ids`), decoded without special
    tokens, and whether it ended within `max_new_tokens`."""
    ends = end_token_ids(model, tokenizer)
    return [
        (tokenizer.decode(ids, skip_special_tokens=True), bool(ids) and ids[-1] in ends)
        for ids in greedy_reply_ids(model, tokenizer, conversations, max_new_tokens, batch_size)
    ]


def greedy_answers(
    model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """The model's greedy reply to each conversation (see `greedy_replies`)."""
    return [reply for reply, _ in greedy_replies(model, tokenizer, conversations, max_new_tokens, batch_size)]


def prompt_completion_ids(tokenizer, prompt, completion, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + completion, and where the completion starts; the prompt is cut from the left when
    the pair is longer than `max_length`."""
    if isinstance(prompt, str) and isinstance(completion, str):
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    elif isinstance(prompt, list) and isinstance(completion, list):
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        if not full_text.startswith(prompt_text):
            raise RecipeError(
                "The chat template renders a prompt differently on its own than followed by its "
                "answer, so the answer's tokens cannot be told apart; use a prefix-stable template."
            )
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        # the answer and its end-of-turn token; whitespace the template puts after the turn is not the model's answer
        completion_ids = tokenizer(full_text[len(prompt_text) :].rstrip(), add_special_tokens=False)["input_ids"]
    else:
        raise RecipeError(
            "Preference rows need `prompt` and `chosen`/`rejected` both as strings or both as lists "
            f"of messages, got {type(prompt).__name__} and {type(completion).__name__}."
        )
    completion_ids = completion_ids[: max(max_length - 1, 1)]
    prompt_ids = prompt_ids[-max(max_length - len(completion_ids), 1) :] if prompt_ids else []
    return prompt_ids + completion_ids, max(len(prompt_ids), 1)


@torch.no_grad()
def completion_logps(model, tokenizer, sequences: list[tuple[list[int], int]], batch_size: int = 4) -> torch.Tensor:
    """log p(completion | prompt) = Σ over completion tokens of log p(token | everything before it), float64."""
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    totals = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        longest = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), longest), pad, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for row, (tokens, _) in enumerate(batch):
            ids[row, : len(tokens)] = torch.tensor(tokens, device=device)
            mask[row, : len(tokens)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits
        for row, (tokens, first) in enumerate(batch):
            log_probs = torch.log_softmax(logits[row, first - 1 : len(tokens) - 1].double(), dim=-1)
            totals.append(log_probs.gather(1, ids[row, first : len(tokens)].unsqueeze(1)).sum())
    return torch.stack(totals).cpu()
