"""The replay prompts, and a copy of the tiny base whose replies to them end early, so that some replay answers
finish (a random base never says its end-of-turn token by itself)."""

import json
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .data import write_jsonl

PROMPTS = ["tell me a story", "describe a tree", "plan a day", "write a note", "give advice"]


def first_tokens(model_dir, prompts):
    """The first token the tiny base generates for each prompt."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    batch = tokenizer(
        [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ],
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=1, do_sample=False)
    return model, tokenizer, out[:, -1].tolist()


def base_that_ends_some_replies(model_dir, folder: Path):
    """A copy of the tiny base whose replies end at the first prompt's first token (some replay answers then
    finish), the replay prompts file, and the first token of each prompt's reply."""
    copy = folder / "tiny"
    shutil.copytree(model_dir, copy)
    _, tokenizer, firsts = first_tokens(copy, PROMPTS)
    config = json.loads((copy / "generation_config.json").read_text())
    config["eos_token_id"] = [tokenizer.eos_token_id, firsts[0]]
    (copy / "generation_config.json").write_text(json.dumps(config))
    return copy, write_jsonl([{"prompt": p} for p in PROMPTS], folder / "prompts.jsonl"), firsts
