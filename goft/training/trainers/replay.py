"""SFT replay: training rows in which the base model answers everyday requests itself.

With `replay_share` s > 0, the SFT training split is mixed with replay rows until they make up a share s of it: each
row is an everyday request or a short factual question (`replay_prompts`, not the task's) with the base model's own
greedy answer. Training on
them asks the adapter to leave the model's behaviour on other requests as it was while it learns the task from the
rest of the rows (self-distillation). Only answers the base finishes within `replay_answer_tokens` are used: a cut
answer would teach the model to stop mid-sentence. The answers are written to `replay.json` in the output folder, so
that a resumed run, or a later stage continuing this run's adapter, uses them without generating them again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

from datasets import Dataset, concatenate_datasets

from goft.errors import RecipeError
from goft.evaluation import assets
from goft.evaluation.model_io import as_base, greedy_replies

logger = logging.getLogger(__name__)

REPLAY_FILE = "replay.json"
MAX_SHARE = 0.9


def load_replay_prompts(path) -> list[str]:
    """The `prompt` of every line of a replay-prompt JSONL file; refuses missing, empty or repeated prompts."""
    prompts = []
    for number, record in assets.read_jsonl(path, "replay prompt"):
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RecipeError(f"Line {number} of the replay prompt file {str(path)!r} has no `prompt` text.")
        if prompt in prompts:
            raise RecipeError(f"Line {number} of the replay prompt file {str(path)!r} repeats an earlier prompt.")
        prompts.append(prompt)
    return prompts


def replay_prompt_set(path=None) -> list[str]:
    """The prompts of `path`, or by default those of every packaged replay file (everyday requests, then short
    factual questions); a prompt in two files is refused like one repeated within a file."""
    if path:
        return load_replay_prompts(path)
    prompts = [p for file in assets.DEFAULT_REPLAY for p in load_replay_prompts(file)]
    if len(set(prompts)) != len(prompts):
        raise RecipeError("The packaged replay prompt files share a prompt.")
    return prompts


def check_replay_arguments(args, stage: str) -> None:
    """The replay and anchor keys checked, and the prompt file read, before any model is loaded."""
    if args.replay_share:
        if stage != "sft":
            raise RecipeError(
                "`replay_share` is an SFT key (replay rows are conversations); DPO trains on preference "
                "pairs (the anchor, `anchor_weight`, works in both stages)."
            )
        if not 0 < args.replay_share <= MAX_SHARE:
            raise RecipeError(
                f"`replay_share` must be in (0, {MAX_SHARE}] (the share of training rows that replay "
                f"the base's answers), got {args.replay_share}."
            )
    if args.anchor_weight:
        if not 0 < args.anchor_weight < math.inf:
            raise RecipeError(
                f"`anchor_weight` must be a positive number (0 turns the anchor off), got {args.anchor_weight}."
            )
        if args.anchor_batch_size < 1:
            raise RecipeError(f"`anchor_batch_size` must be at least 1, got {args.anchor_batch_size}.")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RecipeError(
                "`anchor_weight` runs in one process only (its extra forward passes bypass the "
                "distributed wrapper); train with one process, or turn the anchor off with "
                "`--anchor_weight 0`."
            )
    if not (args.replay_share or args.anchor_weight):
        return
    if args.replay_answer_tokens < 1:
        raise RecipeError(f"`replay_answer_tokens` must be at least 1, got {args.replay_answer_tokens}.")
    replay_prompt_set(args.replay_prompts)


def replay_row_count(share: float, task_rows: int) -> int:
    """Replay rows r such that r / (r + task_rows) is `share`, rounded (at least 1)."""
    return max(1, round(share / (1 - share) * task_rows))


def _replay_key(args, prompts: list[str], base_name: str) -> str:
    parts = {"prompts": prompts, "answer_tokens": args.replay_answer_tokens, "base": base_name}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def base_replay_answers(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[dict]:
    """The base model's greedy answer to each prompt, with whether it finished within `max_new_tokens`."""
    with as_base(model):
        replies = greedy_replies(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts], max_new_tokens)
    return [
        {"prompt": p, "answer": reply.strip(), "finished": finished} for p, (reply, finished) in zip(prompts, replies)
    ]


def _stored_answers(path: Path, key: str) -> list[dict] | None:
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return stored.get("answers") if isinstance(stored, dict) and stored.get("key") == key else None


def replay_answers(
    args, model, tokenizer, output_dir, base_name: str, main_process_first, earlier_run: str | None = None
) -> list[dict]:
    """The base's answers to the replay prompts: read from `replay.json` in `output_dir` or in the folder of the
    run this one continues (`earlier_run`) when it holds these prompts' answers for this base, else generated (by
    the main process first; the others then read them)."""
    prompts = replay_prompt_set(args.replay_prompts)
    key = _replay_key(args, prompts, base_name)
    path = Path(output_dir) / REPLAY_FILE
    with main_process_first(desc="replay answers"):
        for folder in (Path(output_dir), *([Path(earlier_run)] if earlier_run else [])):
            answers = _stored_answers(folder / REPLAY_FILE, key)
            if answers is not None:
                break
        else:
            answers = base_replay_answers(model, tokenizer, prompts, args.replay_answer_tokens)
        if _stored_answers(path, key) is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"key": key, "answers": answers}, indent=1))
    return answers


def mix_replay(train_dataset, answers: list[dict], share: float) -> tuple[object, dict]:
    """The training split with replay rows added (the finished answers, cycled as often as needed), and what the
    run records about them."""
    finished = [a for a in answers if a["finished"] and a["answer"]]
    if not finished:
        raise RecipeError(
            "The base model finished none of its replay answers within `replay_answer_tokens`; raise "
            "it, or give shorter requests in `replay_prompts`."
        )
    count = replay_row_count(share, len(train_dataset))
    rows = [finished[i % len(finished)] for i in range(count)]
    asked = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    answered = [[{"role": "assistant", "content": r["answer"]}] for r in rows]
    if "messages" in train_dataset.column_names:
        replay = {"messages": [prompt + answer for prompt, answer in zip(asked, answered)]}
    elif "completion" in train_dataset.column_names:  # prompt-completion conversations (`check_data_type`)
        replay = {"prompt": asked, "completion": answered}
    else:
        raise RecipeError("Replay needs conversational SFT data (`messages`, or prompt-completion conversations).")
    for column in train_dataset.column_names:  # the task's other columns, empty in replay rows
        if column not in replay:
            replay[column] = [None] * count
    mixed = concatenate_datasets([train_dataset, Dataset.from_dict(replay).cast(train_dataset.features)])
    record = {
        "replay/rows": count,
        "replay/share": count / len(mixed),
        "replay/distinct_prompts": min(count, len(finished)),
        "replay/unfinished_answers_dropped": len(answers) - len(finished),
    }
    logger.info(
        "replay: %d rows of the base's own answers (%d distinct prompts) added to %d task rows",
        count,
        record["replay/distinct_prompts"],
        len(train_dataset),
    )
    return mixed, record
