"""The retention set: short general-knowledge questions with accepted answers, asked greedily and scored with a
normalised match. Only the questions the base model answers correctly count; retention is the share of those the
tuned model still answers correctly."""

import logging
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from goft.errors import RecipeError
from goft.evaluation.assets import read_jsonl
from goft.evaluation.base_replies import base_answers_to
from goft.evaluation.model_io import greedy_answers

logger = logging.getLogger(__name__)

ANSWER_TOKENS = 48  # room for a sentence of lead-in before the answer; the key phrase must appear within these tokens
# questions asked together: on the 354 questions, batches of 32, 64 and 128 give the embedded model's same replies,
# token for token (batching changes only float sums); 64 costs a fifth less time than 32
ANSWER_BATCH = 64
QUESTION_KEYS = ("id", "topic", "question", "answers")

UNITS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
ARTICLES = {"a", "an", "the"}


@dataclass(frozen=True)
class Question:
    id: str
    topic: str
    question: str
    answers: tuple[str, ...]


def _below_hundred(words: list[str], i: int) -> tuple[int, int]:
    """(value, words used) of a number word below 100 at `words[i]` ("seven", "twenty one"); (0, 0) if none."""
    if i < len(words) and words[i] in UNITS:
        return UNITS[words[i]], 1
    if i < len(words) and words[i] in TENS:
        if i + 1 < len(words) and words[i + 1] in UNITS and 0 < UNITS[words[i + 1]] < 10:
            return TENS[words[i]] + UNITS[words[i + 1]], 2
        return TENS[words[i]], 1
    return 0, 0


def _number(words: list[str], i: int) -> tuple[int, int]:
    """(value, words used) of a spelled-out number at `words[i]` ("two hundred and five"); (0, 0) if none."""
    total, used = 0, 0
    value, n = _below_hundred(words, i)
    if not n:
        return 0, 0
    used += n
    while i + used < len(words) and words[i + used] in SCALES:
        scale = SCALES[words[i + used]]
        value, used = value * scale, used + 1
        if scale > 100:  # "two thousand five hundred": close this group and read the rest as its own number
            total, value = total + value, 0
        step = 1 if i + used < len(words) and words[i + used] == "and" else 0
        rest, n = _below_hundred(words, i + used + step)
        if n:
            value, used = value + rest, used + step + n
    return total + value, used


def normalise_answer(text: str) -> str:
    """Lower case, accents and punctuation dropped, articles removed, spelled-out numbers as digits (thousands
    separators removed): "The answer is Twenty-One." → "answer is 21"."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 → 1000
    text = re.sub(r"(?<=\d)\.(?=\d)", "<point>", text)  # keep decimal points
    text = re.sub(r"[^\w<>]+|_", " ", text).replace("<point>", ".")
    words = [w for w in text.split() if w not in ARTICLES]
    out, i = [], 0
    while i < len(words):
        value, used = _number(words, i)
        if used:
            out.append(str(value))
            i += used
        else:
            out.append(words[i])
            i += 1
    return " ".join(out)


def is_correct(reply: str, answers) -> bool:
    """True when an accepted answer appears in the reply as whole words, both normalised."""
    said = f" {normalise_answer(reply)} "
    return any(f" {key} " in said for key in (normalise_answer(a) for a in answers) if key)


def load_questions(path) -> list[Question]:
    """The questions of a JSON Lines file, one {"id", "topic", "question", "answers"} object a line."""
    questions, seen = [], set()
    for number, record in read_jsonl(path, "retention question"):
        where = f"line {number} of the retention question file {str(path)!r}"
        if any(k not in record for k in QUESTION_KEYS):
            raise RecipeError(f"The object on {where} must have {list(QUESTION_KEYS)}.")
        answers = record["answers"]
        if (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, str) and normalise_answer(a) for a in answers)
        ):
            raise RecipeError(f"`answers` on {where} must be a non-empty list of answers with words in them.")
        if not isinstance(record["question"], str) or not record["question"].strip():
            raise RecipeError(f"`question` on {where} must be a non-empty string.")
        if record["id"] in seen:
            raise RecipeError(f"The id {record['id']!r} on {where} is used twice.")
        seen.add(record["id"])
        questions.append(Question(str(record["id"]), str(record["topic"]), record["question"], tuple(answers)))
    return questions


def answers_correct(model, tokenizer, questions: list[Question], batch_size: int = ANSWER_BATCH) -> list[bool]:
    """Whether the model's greedy answer to each question contains an accepted answer. The model runs as given:
    wrap the call in `adapter_off` to ask the base of a peft model."""
    replies = greedy_answers(model, tokenizer, _conversations(questions), ANSWER_TOKENS, batch_size)
    return [is_correct(reply, q.answers) for reply, q in zip(replies, questions)]


def _conversations(questions: list[Question]) -> list[list[dict]]:
    return [[{"role": "user", "content": q.question}] for q in questions]


def known_questions(model, tokenizer, questions: list[Question], batch_size: int = ANSWER_BATCH) -> list[Question]:
    """The questions the base of `model` (a peft model with its adapter off) answers correctly: the ones whose
    retention is measured. The base's answers are computed once per base and question set (`base_replies`)."""
    replies = base_answers_to(model, tokenizer, _conversations(questions), ANSWER_TOKENS, batch_size)
    return [q for q, reply in zip(questions, replies) if is_correct(reply, q.answers)]


def knowledge_retention(model, tokenizer, known: list[Question], batch_size: int = ANSWER_BATCH) -> dict:
    """Share of the base's correctly answered questions `known` that `model` still answers correctly, overall and
    per topic, with the ids of those it lost."""
    if not known:
        logger.warning(
            "The base model answers none of the retention questions correctly: retention cannot be "
            "measured (give a question set this model knows)."
        )
        return {"retention": float("nan"), "retained": 0, "known_to_base": 0, "retention_by_topic": {}, "lost": []}
    return _retention(known, answers_correct(model, tokenizer, known, batch_size))


def full_retention(known: list[Question]) -> dict:
    """What `knowledge_retention` reports for the base itself (or an adapter that is exactly the identity): every
    question it knows, kept. Asking again would only measure how a batch's padding rounds."""
    return _retention(known, [True] * len(known))


def _retention(known: list[Question], correct: list[bool]) -> dict:
    per_topic, kept = Counter(q.topic for q in known), Counter(q.topic for q, ok in zip(known, correct) if ok)
    return {
        "retention": sum(correct) / len(known),
        "retained": sum(correct),
        "known_to_base": len(known),
        "retention_by_topic": {t: kept[t] / n for t, n in sorted(per_topic.items())},
        "lost": [q.id for q, ok in zip(known, correct) if not ok],
    }
