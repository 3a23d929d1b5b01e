"""The evaluation sets that ship with goft as package data, so that they are found wherever goft is installed."""

from importlib import resources
from pathlib import Path

_DATA = resources.files("goft.evaluation") / "data"

# Original prose paragraphs, never trained on: the forgetting set (KL and perplexity on general text).
GENERAL_TEXT = Path(str(_DATA / "general_text.jsonl"))
# Short general-knowledge questions with accepted answers: the retention set.
RETENTION_QUESTIONS = Path(str(_DATA / "retention_questions.jsonl"))
# Open instructions (explain, list, write): how far tuned answers drift from the base's own.
OPEN_INSTRUCTIONS = Path(str(_DATA / "open_instructions.jsonl"))
