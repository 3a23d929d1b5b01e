"""Small SFT and DPO datasets for the tiny chat model, and JSON-lines files."""

import json
from pathlib import Path


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def sft_rows(n: int = 48) -> list[dict]:
    words = ["red", "blue", "green", "gold"]
    return [
        {"messages": [{"role": "user", "content": f"colour {i % 7}?"}, {"role": "assistant", "content": words[i % 4]}]}
        for i in range(n)
    ]


def dpo_rows(n: int = 48) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": f"say {i % 5}"}],
            "chosen": [{"role": "assistant", "content": "yes"}],
            "rejected": [{"role": "assistant", "content": "no, never"}],
        }
        for i in range(n)
    ]
