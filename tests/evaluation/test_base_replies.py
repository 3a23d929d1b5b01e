"""The base's replies kept on disk: the same replies as asking the base, read back while nothing they depend on
changed, asked again after any change; adapters that are exactly the identity recognised, and nothing else."""

import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import goft
from goft.evaluation import base_replies as store
from goft.evaluation.model_io import greedy_replies, merged_for_scoring
from goft.evaluation.weights import adapter_is_identity
from tests.support.models import save_tiny_chat_model

TARGETS = ["q_proj", "v_proj", "down_proj"]
QUESTIONS = [[{"role": "user", "content": f"question number {i}?"}] for i in range(7)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = save_tiny_chat_model(tmp_path_factory.mktemp("replies") / "tiny")
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(
        folder
    )


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """The store in a folder of this test's own, and a count of the generations it asks for."""
    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path / "store"))
    calls = []
    real = store.greedy_reply_ids

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "greedy_reply_ids", counting)
    return calls


def adapted(base, config=None):
    return get_peft_model(copy.deepcopy(base), config or goft.GivensConfig(target_modules=TARGETS, init_weights=False))


def test_replies_are_the_base_s_and_are_read_back(tiny, counted):
    base, tokenizer = tiny
    model = adapted(base)
    expected = greedy_replies(base, tokenizer, QUESTIONS, 12, batch_size=4)
    assert store.base_replies(model, tokenizer, QUESTIONS, 12, batch_size=4) == expected  # computed, adapter off
    assert store.base_replies(model, tokenizer, QUESTIONS, 12, batch_size=4) == expected  # read back
    assert store.base_replies(base, tokenizer, QUESTIONS, 12, batch_size=4) == expected  # the same base, plain
    assert len(counted) == 1
    other = adapted(base, LoraConfig(target_modules=TARGETS, r=4, init_lora_weights=False))
    assert store.base_replies(other, tokenizer, QUESTIONS, 12, batch_size=4) == expected  # another adapter, same base
    with merged_for_scoring(model):  # the adapter merged: the base's weights are swapped in to ask the base
        assert store.base_replies(model, tokenizer, QUESTIONS, 12, batch_size=4) == expected
    assert len(counted) == 1


@pytest.mark.parametrize("change", ["weights", "set", "length", "batch", "template"])
def test_asked_again_after_any_change(tiny, counted, change):
    base, tokenizer = tiny
    base, tokenizer = copy.deepcopy(base), copy.deepcopy(tokenizer)
    store.base_replies(base, tokenizer, QUESTIONS, 12, batch_size=4)
    questions, tokens, batch = QUESTIONS, 12, 4
    if change == "weights":
        with torch.no_grad():
            base.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    elif change == "set":
        questions = QUESTIONS[:-1] + [[{"role": "user", "content": "another question?"}]]
    elif change == "length":
        tokens = 13
    elif change == "batch":
        batch = 3
    else:
        tokenizer.chat_template = tokenizer.chat_template.replace("<|im_start|>", "<|im_start|> ")
    replies = store.base_replies(base, tokenizer, questions, tokens, batch_size=batch)
    assert len(counted) == 2
    assert replies == greedy_replies(base, tokenizer, questions, tokens, batch_size=batch)


def test_off_and_unreadable_entries(tiny, counted, monkeypatch, tmp_path):
    base, tokenizer = tiny
    store.base_replies(base, tokenizer, QUESTIONS, 12, batch_size=4)
    (entry,) = (tmp_path / "store").glob("*.json")
    assert len(json.loads(entry.read_text())["generated"]) == len(QUESTIONS)
    entry.write_text("{not json")
    store.base_replies(base, tokenizer, QUESTIONS, 12, batch_size=4)  # computed again, entry rewritten
    assert len(counted) == 2 and json.loads(entry.read_text())["generated"]
    monkeypatch.setenv(store.CACHE_ENV, "off")
    store.base_replies(base, tokenizer, QUESTIONS, 12, batch_size=4)
    store.base_replies(base, tokenizer, QUESTIONS, 12, batch_size=4)
    assert len(counted) == 4


def test_identity_adapters_are_recognised(tiny):
    base, _ = tiny
    assert adapter_is_identity(adapted(base, goft.GivensConfig(target_modules=TARGETS)))
    assert adapter_is_identity(adapted(base, goft.GivensConfig(target_modules=TARGETS, strict=False, quasi=True)))
    assert adapter_is_identity(adapted(base, goft.GivensConfig(target_modules=TARGETS, strict=False, scaling=True)))
    assert adapter_is_identity(adapted(base, LoraConfig(target_modules=TARGETS, r=4)))
    assert not adapter_is_identity(adapted(base))  # random angles
    assert not adapter_is_identity(adapted(base, LoraConfig(target_modules=TARGETS, r=4, init_lora_weights=False)))
    assert not adapter_is_identity(adapted(base, LoraConfig(target_modules=TARGETS, r=4, use_dora=True)))
    from peft import OFTConfig

    assert not adapter_is_identity(adapted(base, OFTConfig(target_modules=TARGETS, oft_block_size=4)))  # unknown
    scaled = adapted(base, goft.GivensConfig(target_modules=TARGETS, strict=False, scaling=True))
    with torch.no_grad():
        next(p for n, p in scaled.named_parameters() if "givens_scale" in n)[0] = 1.0 + 2**-20
    assert not adapter_is_identity(scaled)
