"""The evaluation sets that ship with goft as package data, so that they are found wherever goft is installed."""

import hashlib
import json
from importlib import resources
from pathlib import Path

from goft.errors import RecipeError

_DATA = resources.files("goft.evaluation") / "data"

# Original prose paragraphs, never trained on: the forgetting set (KL and perplexity on general text).
GENERAL_TEXT = Path(str(_DATA / "general_text.jsonl"))
# Short general-knowledge questions with accepted answers: the retention set.
RETENTION_QUESTIONS = Path(str(_DATA / "retention_questions.jsonl"))
# Open instructions (explain, list, write): how far tuned answers drift from the base's own.
OPEN_INSTRUCTIONS = Path(str(_DATA / "open_instructions.jsonl"))
# Everyday requests (write, advise, describe, plan), none of them a retention question or an open instruction: the
# prompts that SFT replay asks the base model to answer, its answers becoming training rows.
REPLAY_PROMPTS = Path(str(_DATA / "replay_prompts.jsonl"))
# Short general-knowledge questions about other facts than the retention set's (no capitals, no sums): with the
# everyday requests, the default prompts of replay and the anchor, so that the base's way of answering a factual
# question is among what the anchor holds.
REPLAY_QUESTIONS = Path(str(_DATA / "replay_questions.jsonl"))
DEFAULT_REPLAY = (REPLAY_PROMPTS, REPLAY_QUESTIONS)


PACKAGED = {
    path: f"goft:{path.name}" for path in (GENERAL_TEXT, RETENTION_QUESTIONS, OPEN_INSTRUCTIONS, *DEFAULT_REPLAY)
}


def describe_file(path) -> dict | None:
    """Where a set comes from, independent of where goft or the project sits: a packaged set by its name
    ("goft:general_text.jsonl"), any other file as given, and the sha256 of its content (None for a skipped set), so
    that a report can tell whether two runs were measured on the same questions."""
    if path is None:
        return None
    file = Path(path).expanduser()
    source = PACKAGED.get(file, str(path))
    digest = hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else None
    return {"file": source, "sha256": digest}


def read_jsonl(path, what: str) -> list[tuple[int, dict]]:
    """(line number, object) of every non-blank line of a JSON Lines file; `what` names the file in errors
    ("general-text", "retention question", ...). A missing or empty file, invalid JSON or a line that is not an
    object is a `RecipeError` naming the file and the line."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise RecipeError(f"The {what} file {str(path)!r} is a folder; give the path of a JSON Lines file.")
    if not path.is_file():
        raise RecipeError(f"The {what} file {str(path)!r} does not exist.")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise RecipeError(
                f"The {what} file {str(path)!r} is not valid JSONL: {error.msg} (line {number}, column {error.colno})."
            ) from None
        if not isinstance(record, dict):
            raise RecipeError(f"Line {number} of the {what} file {str(path)!r} is not a JSON object.")
        records.append((number, record))
    if not records:
        raise RecipeError(f"The {what} file {str(path)!r} is empty.")
    return records
