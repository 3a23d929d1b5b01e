"""Greedy decoding with each adapter unmerged and merged, beside the base model: time per generated token.

    python -m benchmarks.decode_benchmark                  # CPU: the embedded SmolLM2-135M-Instruct, fp32
    python -m benchmarks.decode_benchmark --device cuda    # GPU: bf16

Every adapter is random (not the identity), on every linear layer. "unmerged" is what a user gets from
``PeftModel.from_pretrained(...)`` followed by ``generate``; "merged" is the same adapter folded into the weights
(``merge_and_unload``). "GOFT strict, rebuilt each call" is the unmerged strict adapter with its rotation built at
every call (``goft.rotations_rebuilt_each_call``), as every call did before layers kept their rotations. Each
generation produces exactly ``--new_tokens`` tokens (no early stop); every round times each case once, in turn, and
the table reports medians and ratios to the base and to unmerged LoRA r = 16 from that one run.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, get_peft_model
from transformers import HfArgumentParser

from benchmarks.measure import checked_device_and_dtype, interleaved_medians, machine
from goft import GivensConfig, rotations_rebuilt_each_call
from goft.io.formats import markdown_table, write_json
from goft.io.model_source import load_causal_lm, load_tokenizer, resolve_model_source

BASE = "base"
LORA_UNMERGED = "LoRA r=16, unmerged"
STRICT_UNMERGED = "GOFT strict, unmerged"
STRICT_REBUILT = "GOFT strict, rebuilt each call"
ADAPTERS = {
    "GOFT strict": lambda: GivensConfig(target_modules="all-linear", init_weights=False),
    "GOFT quasi": lambda: GivensConfig(target_modules="all-linear", strict=False, quasi=True, init_weights=False),
    "GOFT*": lambda: GivensConfig(target_modules="all-linear", strict=False, scaling=True, init_weights=False),
    "LoRA r=16": lambda: LoraConfig(target_modules="all-linear", r=16, lora_alpha=32, init_lora_weights=False),
}
PROMPTS = [
    "What is the capital of France? Explain briefly.",
    "Write two sentences about the sea.",
    "List three uses of copper.",
    "How do plants make their food?",
]


@dataclass
class DecodeBenchmarkArguments:
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "The base model (id, folder or GGUF)."})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda."})
    dtype: str | None = field(default=None, metadata={"help": "Default: float32 on CPU, bfloat16 on CUDA."})
    new_tokens: int = field(default=32, metadata={"help": "Tokens generated per sequence."})
    batch_size: int = field(default=1, metadata={"help": "Sequences generated together (left-padded)."})
    adapters: list[str] | None = field(default=None, metadata={"help": f"Subset of: {', '.join(ADAPTERS)}."})
    repeats: int = field(default=5, metadata={"help": "Timed rounds (the median is reported)."})
    warmup: int = field(default=1, metadata={"help": "Untimed rounds first."})
    seed: int = field(default=0)
    output: str = field(default="runs/benchmarks/decode.json", metadata={"help": "Where the JSON results go."})

    def __post_init__(self):
        self.dtype = checked_device_and_dtype(self.device, self.dtype)
        unknown = [name for name in (self.adapters or []) if name not in ADAPTERS]
        if unknown:
            raise ValueError(f"Unknown adapters {unknown}; choose from: {', '.join(ADAPTERS)}.")
        self.adapters = list(dict.fromkeys(["LoRA r=16", *(self.adapters or ADAPTERS)]))  # the ratios' reference
        if min(self.new_tokens, self.batch_size, self.repeats) < 1 or self.warmup < 0:
            raise ValueError("new_tokens, batch_size and repeats must be >= 1, warmup >= 0.")
        if self.batch_size > len(PROMPTS):
            raise ValueError(f"--batch_size is at most {len(PROMPTS)} (the benchmark's prompts).")


def generation(model, inputs, new_tokens: int, pad_token_id: int, context=contextlib.nullcontext):
    def generate():
        with torch.no_grad(), context():
            model.generate(
                **inputs,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad_token_id,
            )

    return generate


def build_cases(args: DecodeBenchmarkArguments, base, inputs, pad_token_id: int) -> dict:
    cases = {BASE: generation(base, inputs, args.new_tokens, pad_token_id)}
    for name in args.adapters:
        torch.manual_seed(args.seed)
        unmerged = get_peft_model(copy.deepcopy(base), ADAPTERS[name]()).eval()
        merged = copy.deepcopy(unmerged).merge_and_unload().eval()
        cases[f"{name}, unmerged"] = generation(unmerged, inputs, args.new_tokens, pad_token_id)
        if name == "GOFT strict":
            cases[STRICT_REBUILT] = generation(
                unmerged, inputs, args.new_tokens, pad_token_id, context=rotations_rebuilt_each_call
            )
        cases[f"{name}, merged"] = generation(merged, inputs, args.new_tokens, pad_token_id)
    return cases


def main(args: DecodeBenchmarkArguments) -> dict:
    device = torch.device(args.device)
    source = resolve_model_source(args.model)
    base = load_causal_lm(source, dtype=args.dtype).to(device).eval()
    tokenizer = load_tokenizer(source)
    tokenizer.padding_side = "left"
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in PROMPTS[: args.batch_size]
    ]
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    cases = build_cases(args, base, inputs, pad_token_id)
    timings = interleaved_medians(cases, args.repeats, args.warmup, device)
    base_ms, lora_ms = timings[BASE]["median_ms"], timings[LORA_UNMERGED]["median_ms"]
    rows = [
        {
            "case": name,
            **timing,
            "ms_per_token": timing["median_ms"] / args.new_tokens,
            "vs_base": timing["median_ms"] / base_ms,
            "vs_lora_unmerged": timing["median_ms"] / lora_ms,
        }
        for name, timing in timings.items()
    ]
    by_case = {row["case"]: row for row in rows}
    checks = []
    if STRICT_UNMERGED in by_case:
        ratio = by_case[STRICT_UNMERGED]["vs_lora_unmerged"]
        checks.append({"target": "GOFT strict unmerged / LoRA unmerged", "ratio": ratio, "limit": 1.0})
        checks[-1]["met"] = ratio <= 1.0
    result = {
        "benchmark": "decode",
        "machine": machine(device),
        "model": args.model,
        "dtype": args.dtype,
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "batch_size": args.batch_size,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "rows": rows,
        "targets": checks,
    }
    write_json(args.output, result)
    print(report(result))
    return result


def report(result: dict) -> str:
    header = (
        f"\n{result['model']}, {result['dtype']}, batch {result['batch_size']}, {result['new_tokens']} new tokens "
        f"after {result['prompt_tokens']}, median of {result['repeats']} rounds\n"
    )
    table = markdown_table(
        ["case", "median ms", "ms / token", "× base", "× LoRA unmerged"],
        [
            [
                r["case"],
                f"{r['median_ms']:.0f}",
                f"{r['ms_per_token']:.1f}",
                f"{r['vs_base']:.2f}",
                f"{r['vs_lora_unmerged']:.2f}",
            ]
            for r in result["rows"]
        ],
    )
    targets = "".join(
        f"\n{c['target']}: {c['ratio']:.2f} (limit {c['limit']:.2f}) {'met' if c['met'] else 'NOT met'}"
        for c in result["targets"]
    )
    return header + "\n" + table + "\n" + targets


if __name__ == "__main__":
    (parsed,) = HfArgumentParser(DecodeBenchmarkArguments).parse_args_into_dataclasses()
    main(parsed)
