"""Greedy replies: batched (left padding, the KV cache, finished rows dropped) equal to one-by-one and to
transformers' `generate`, token for token; a generation config that asks for more than the argmax decoded by
`generate` itself."""

import copy

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import goft
from goft.evaluation import model_io
from tests.support.models import save_tiny_chat_model

PROMPTS = [[{"role": "user", "content": f"question number {i}?"}] for i in range(6)] + [
    [{"role": "user", "content": "a much longer question, with many more words in it than the others?"}]
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = save_tiny_chat_model(tmp_path_factory.mktemp("greedy") / "tiny")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def with_generate(model, tokenizer, prompts, tokens, batch_size):
    """The replies as transformers' `generate` gives them (the loop of `greedy_reply_ids` turned off)."""
    original = model_io._plain_greedy
    model_io._plain_greedy = lambda model: False
    try:
        return model_io.greedy_reply_ids(model, tokenizer, prompts, tokens, batch_size)
    finally:
        model_io._plain_greedy = original


def ended(replies, model, tokenizer) -> int:
    ends = model_io.end_token_ids(model, tokenizer)
    return sum(bool(r) and r[-1] in ends for r in replies)


@pytest.mark.parametrize("adapter", [False, True])
def test_batched_equals_one_by_one_and_generate(tiny, adapter):
    base, tokenizer = tiny
    model = base
    if adapter:
        model = get_peft_model(copy.deepcopy(base), goft.GivensConfig(target_modules="all-linear", init_weights=False))
    assert model_io._plain_greedy(model)
    batched = model_io.greedy_reply_ids(model, tokenizer, PROMPTS, 10, batch_size=8)
    alone = [model_io.greedy_reply_ids(model, tokenizer, [p], 10, batch_size=1)[0] for p in PROMPTS]
    assert batched == alone == with_generate(model, tokenizer, PROMPTS, 10, batch_size=8)
    assert all(1 <= len(r) <= 10 for r in batched)


def test_finished_rows_leave_the_batch_and_the_rest_go_on(tiny):
    base, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    free = model_io.greedy_reply_ids(base, tokenizer, PROMPTS, 12, batch_size=8)

    # an end token that some replies reach at different steps and others never: rows leave the batch one by one
    def lengths_if_it_ended(token):
        return [reply.index(token) + 1 if token in reply else None for reply in free]

    candidates = sorted({token for reply in free for token in reply})
    stop = max(candidates, key=lambda t: (None in lengths_if_it_ended(t), len(set(lengths_if_it_ended(t)))))
    base.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    replies = model_io.greedy_reply_ids(base, tokenizer, PROMPTS, 12, batch_size=8)
    assert 1 < ended(replies, base, tokenizer) < len(PROMPTS)  # some rows ended early, others ran on
    assert len({len(r) for r in replies}) > 2
    assert replies == with_generate(base, tokenizer, PROMPTS, 12, batch_size=8)


def test_a_config_asking_for_more_than_the_argmax_is_decoded_by_generate(tiny):
    base, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    base.generation_config.repetition_penalty = 3.0
    assert not model_io._plain_greedy(base)
    replies = model_io.greedy_reply_ids(base, tokenizer, PROMPTS, 10, batch_size=8)
    assert replies == with_generate(base, tokenizer, PROMPTS, 10, batch_size=8)
    base.generation_config.repetition_penalty = None
    assert replies != model_io.greedy_reply_ids(base, tokenizer, PROMPTS, 10, batch_size=8)  # the penalty mattered
