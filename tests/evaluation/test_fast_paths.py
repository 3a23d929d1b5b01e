"""The speed-ups of evaluation change no number: two adapters evaluated with every one of them on (kept rotations,
the base's replies stored on disk and reused, batched replies with finished rows dropped, the base's logits kept,
an identity adapter's retention not asked again) and with all of them off (rotations rebuilt at each call, no store,
one prompt at a time through `generate`) report the same JSON, to 1e-6."""

import copy
import json
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import goft
from goft.evaluation import base_replies, model_io
from goft.evaluation.knowledge import normalise_answer
from goft.evaluation.runner import EvaluationSets, evaluate_adapters
from tests.support.data import sft_rows, write_jsonl
from tests.support.models import save_tiny_chat_model
from tests.support.training import perturb

TARGETS = ["q_proj", "v_proj", "down_proj"]


def questions_file(model, tokenizer, path):
    """Retention questions built from the tiny base's own first words, and a few it cannot know."""
    asked = [f"question number {i}?" for i in range(10)]
    replies = model_io.greedy_answers(model, tokenizer, [[{"role": "user", "content": q}] for q in asked], 24)
    rows = [
        {"id": f"q{i}", "topic": "tiny", "question": q, "answers": [normalise_answer(r).split()[0]]}
        for i, (q, r) in enumerate(zip(asked, replies))
        if normalise_answer(r)
    ]
    rows += [{"id": f"x{i}", "topic": "other", "question": f"what is {i}?", "answers": ["zzzqqq"]} for i in range(3)]
    return write_jsonl(rows, path)


def one_by_one(original):
    def generate_alone(model, tokenizer, conversations, max_new_tokens, batch_size=16):
        return original(model, tokenizer, conversations, max_new_tokens, batch_size=1)

    return generate_alone


def close(a, b, path=""):
    """Every number of `a` within 1e-6 of `b` (relative to its size, at least 1), everything else equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}[{index}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6 * max(1.0, abs(a)), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.mark.slow
def test_fast_and_plain_evaluation_report_the_same_json(tmp_path, monkeypatch):
    folder = save_tiny_chat_model(tmp_path / "tiny")
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    adapters = []
    for name, config in (
        ("givens", goft.GivensConfig(target_modules=TARGETS)),
        ("lora", LoraConfig(target_modules=TARGETS, r=4)),
    ):
        model = perturb(get_peft_model(copy.deepcopy(base), config), 0.3, seed=1)
        model.save_pretrained(tmp_path / name)
        adapters.append(tmp_path / name)
    texts = ["The old lighthouse keeper climbed the stairs.", "Bread rises because yeast turns sugar into gas."]
    sets = EvaluationSets(
        general_text=write_jsonl([{"text": t} for t in texts], tmp_path / "texts.jsonl"),
        retention_questions=questions_file(base, tokenizer, tmp_path / "questions.jsonl"),
        open_instructions=write_jsonl(
            [{"instruction": "Explain rain."}, {"instruction": "List fruits."}], tmp_path / "instructions.jsonl"
        ),
        task_samples=4,
        max_length=48,
        dataset_name=str(write_jsonl(sft_rows(16), tmp_path / "sft.jsonl")),
    )
    monkeypatch.setenv(base_replies.CACHE_ENV, str(tmp_path / "store"))
    fast = evaluate_adapters(adapters, sets=sets)
    again = evaluate_adapters(adapters, sets=sets)  # the base's replies now read from the store

    monkeypatch.setenv(base_replies.CACHE_ENV, "off")
    monkeypatch.setattr(model_io, "_plain_greedy", lambda model: False)  # transformers' generate
    alone = one_by_one(model_io.greedy_reply_ids)
    monkeypatch.setattr(model_io, "greedy_reply_ids", alone)
    monkeypatch.setattr(base_replies, "greedy_reply_ids", alone)
    with goft.rotations_rebuilt_each_call():
        plain = evaluate_adapters(adapters, sets=sets)
    assert any(r["knowledge"]["known_to_base"] for r in fast)
    for result in (fast, again):
        close(json.loads(json.dumps(plain)), json.loads(json.dumps(result)))
