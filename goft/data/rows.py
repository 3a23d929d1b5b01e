"""The shape of each dataset row, checked one row at a time for a stage, so that a bad row is named with where it is
(file and line, or split and row) before any model is loaded. (A row is one JSON object of a data file, which the
error messages call a record as JSON does; the record of a finished run is `goft.io.outputs.read_run_record`.)

SFT rows hold a `messages` conversation: a non-empty list of {role, content} objects with string content and at
least one assistant turn with text (the loss needs one). TRL's prompt/completion pair layout is checked too. DPO
rows hold `prompt`, `chosen` and `rejected`: all three plain strings or all three conversations, none empty, the
replies ending in an assistant turn with text, and `chosen` different from `rejected`. Every row of a dataset must
use the same layout.

Roles are the four that chat templates commonly know: system, user, assistant and tool. `developer` (OpenAI's newer
name for the system turn) is refused with a hint to use `system`: most open models' templates do not render it, or
render it as plain text, and training would go on silently on the wrong prompt.
"""

from collections.abc import Iterable

from goft.errors import RecipeError

ROLES = ("system", "user", "assistant", "tool")
# roles of other conventions (ShareGPT, Gemini, OpenAI, Llama 3), and the role to use instead
ROLE_HINTS = {
    "human": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "ai": "assistant",
    "chatgpt": "assistant",
    "developer": "system",
    "function": "tool",
    "ipython": "tool",
}
PROMPT_LAST_ROLES = ("user", "tool", "assistant")  # TRL refuses a prompt that ends with a system turn
MESSAGE_SHAPE = 'a list of {"role": ..., "content": "..."} objects'


def json_type(value) -> str:
    """The JSON name of a value's type, with its article, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    return "an object" if isinstance(value, dict) else f"a {type(value).__name__}"


def _role_problem(message: dict, label: str) -> str | None:
    role = message.get("role")
    if role is None:
        if "from" in message and "value" in message:
            return (
                f"{label} has `from`/`value` keys (ShareGPT style), not `role`/`content`; rename them, with "
                "roles human → user and gpt → assistant"
            )
        return f"{label} has no `role`; give one of {', '.join(ROLES)}"
    if role in ROLES:
        return None
    folded = role.casefold() if isinstance(role, str) else None
    hint = folded if folded in ROLES else ROLE_HINTS.get(folded)  # templates compare roles case-sensitively
    fix = f"use {hint!r}" if hint else "use one of " + ", ".join(ROLES)
    return f"{label} has the role {role!r}, which most chat templates do not know; {fix}"


def message_problem(message, label: str) -> str | None:
    """What is wrong with one chat message (an object with a known `role` and string `content`), or None."""
    if not isinstance(message, dict):
        return f"{label} is {json_type(message)}, not an object with `role` and `content`"
    problem = _role_problem(message, label)
    if problem:
        return problem
    content = message.get("content")
    if isinstance(content, str):
        return None
    what = "no `content`" if "content" not in message else f"`content` {json_type(content)}"
    return f'{label} ({message["role"]}) has {what}; give its text as a string ("" for a turn without text)'


def conversation_problem(messages, column: str) -> str | None:
    """What is wrong with a conversation (a non-empty list of valid messages) in `column`, or None."""
    if not isinstance(messages, (list, tuple)):
        return f"`{column}` is {json_type(messages)}, not {MESSAGE_SHAPE}"
    if not messages:
        return f"`{column}` is an empty list; give it {MESSAGE_SHAPE}"
    for number, message in enumerate(messages, start=1):
        problem = message_problem(message, f"message {number} of `{column}`")
        if problem:
            return problem
    return None


def _has_text(text: str) -> bool:
    return bool(text.strip())


def _messages_problem(messages) -> str | None:
    if isinstance(messages, (list, tuple)) and not messages:
        return "`messages` is an empty list; give it the conversation, with at least one assistant reply"
    problem = conversation_problem(messages, "messages")
    if problem:
        return problem
    if not any(m["role"] == "assistant" and _has_text(m["content"]) for m in messages):
        return (
            "`messages` has no assistant turn with text, so there is nothing to learn; add the assistant's "
            "reply, or drop the record"
        )
    return None


def _layout(value) -> str | None:
    """'text' for a string, 'conversation' for a list, None for anything else."""
    if isinstance(value, str):
        return "text"
    return "conversation" if isinstance(value, (list, tuple)) else None


def _value_problem(value, column: str) -> str | None:
    """A prompt or a reply is a string with text or a non-empty list."""
    if value is None:
        return f"`{column}` is missing or null; give it a string or {MESSAGE_SHAPE}"
    if _layout(value) is None:
        return f"`{column}` is {json_type(value)}; give it a string or {MESSAGE_SHAPE}"
    if isinstance(value, str) and not _has_text(value):
        return f"`{column}` is an empty string; give it the text"
    if not value:
        return f"`{column}` is an empty list; give it {MESSAGE_SHAPE}"
    return None


def _part_problem(value, column: str, reply: bool) -> str | None:
    """A prompt or a reply (a valid value): a conversation's messages are valid, a reply ends with the assistant's
    text, a prompt does not end with a system turn."""
    if isinstance(value, str):
        return None
    problem = conversation_problem(value, column)
    if problem:
        return problem
    last = value[-1]
    if reply and last["role"] != "assistant":
        return f"the last turn of `{column}` is {last['role']!r}; it must be the assistant's reply"
    if reply and not _has_text(last["content"]):
        return f"the assistant's reply in `{column}` is empty; give it the text"
    if not reply and last["role"] not in PROMPT_LAST_ROLES:
        return f"`{column}` ends with a {last['role']} turn; end it with the user's turn that the reply answers"
    if not reply and not any(_has_text(m["content"]) for m in value):
        return f"`{column}` has no text; give it the user's turn"
    return None


def _pair_problem(record: dict, prompt: str, replies: tuple[str, ...]) -> str | None:
    """A prompt and its replies: each valid, and all plain strings or all conversations."""
    columns = (prompt, *replies)
    for column in columns:
        problem = _value_problem(record.get(column), column)
        if problem:
            return problem
    layouts = {column: _layout(record[column]) for column in columns}
    if len(set(layouts.values())) > 1:
        texts = [c for c in columns if layouts[c] == "text"]
        talks = [c for c in columns if layouts[c] == "conversation"]
        return (
            f"{_names(texts)} {'is a string' if len(texts) == 1 else 'are strings'} but {_names(talks)} "
            f"{'is a conversation' if len(talks) == 1 else 'are conversations'}; make them all strings or all "
            "conversations"
        )
    for column in columns:
        problem = _part_problem(record[column], column, reply=column != prompt)
        if problem:
            return problem
    return None


def _names(columns: list[str]) -> str:
    return "/".join(f"`{c}`" for c in columns)


def sft_row_problem(record: dict) -> str | None:
    """What is wrong with one SFT record (a `messages` conversation, or a prompt/completion pair), or None."""
    if "messages" in record or not ("prompt" in record or "completion" in record):
        if record.get("messages") is None:
            return f"`messages` is missing or null; give each record {MESSAGE_SHAPE}, with the assistant's reply"
        return _messages_problem(record["messages"])
    return _pair_problem(record, "prompt", ("completion",))


def dpo_row_problem(record: dict) -> str | None:
    """What is wrong with one DPO record (prompt, chosen, rejected), or None."""
    problem = _pair_problem(record, "prompt", ("chosen", "rejected"))
    if problem:
        return problem
    if record["chosen"] == record["rejected"]:
        return (
            "`chosen` and `rejected` are identical, so there is no preference to learn; give a worse "
            "`rejected` reply, or drop the record"
        )
    return None


def row_layout(stage: str, record: dict) -> str:
    """How a good record is laid out, in words; every record of a dataset must have the same."""
    if stage == "sft" and "messages" in record:
        return "a `messages` conversation"
    if stage == "sft":
        return f"a prompt/completion pair of {'strings' if isinstance(record['prompt'], str) else 'conversations'}"
    return "plain strings" if isinstance(record["prompt"], str) else "conversations (lists of role/content messages)"


CHECKS = {"sft": sft_row_problem, "dpo": dpo_row_problem}


def row_problem(stage: str, record) -> str | None:
    """What is wrong with one record for `stage` ('sft' or 'dpo'), or None."""
    if not isinstance(record, dict):
        return f"the record is {json_type(record)}, not a JSON object"
    return CHECKS[stage](record)


class RowCheck:
    """Checks a stage's records one at a time: remembers the first bad one, how many are bad, and how many records
    use each layout (the records of a layout used less than another are bad too)."""

    def __init__(self, stage: str, required_columns: Iterable[str], problem=None, layout=None):
        """`problem(record)` and `layout(record)` replace the stage's own (`row_problem`, `row_layout`)."""
        if problem is None and stage not in CHECKS:
            raise ValueError(f"Unknown stage {stage!r}; records are checked for {sorted(CHECKS)}.")
        self.stage = stage
        self.problem = problem or (lambda record: row_problem(stage, record))
        self.layout = layout or (lambda record: row_layout(stage, record))
        self.required = tuple(required_columns)
        self.keys: set[str] = set()
        self.count = 0
        self.bad = 0
        self.first: tuple[int, str, str] | None = None  # (ordinal, where, problem) of the first bad record
        self.layouts: dict[str, list] = {}  # layout → [records, ordinal of the first, where it is]

    def add(self, record, where: str) -> None:
        """Check one record; `where` names it in a message ("The dataset file 'a.jsonl', line 3")."""
        ordinal, self.count = self.count, self.count + 1
        if isinstance(record, dict):
            self.keys.update(record)
        problem = self.problem(record)
        if problem:
            self.bad += 1
            if self.first is None:
                self.first = (ordinal, where, problem)
            return
        entry = self.layouts.setdefault(self.layout(record), [0, ordinal, where])
        entry[0] += 1

    def first_problem(self) -> tuple[str, str, int] | None:
        """(where, what is wrong, how many other records are bad) for the first bad record, or None. None too when
        a required column is in no record at all: the dataset's column check says that better."""
        if self.count == 0 or any(column not in self.keys for column in self.required):
            return None
        candidates = [self.first] if self.first else []
        bad = self.bad
        if len(self.layouts) > 1:
            # the layout most records use (the first one's on a tie) is right; the others are not
            main = max(self.layouts, key=lambda layout: (self.layouts[layout][0], -self.layouts[layout][1]))
            used = self.layouts[main][0]
            for layout, (records, ordinal, where) in self.layouts.items():
                if layout != main:
                    bad += records
                    others = f"{used} other record{'s hold' if used != 1 else ' holds'}"
                    problem = f"this record holds {layout}, but {others} {main}; give every record the same layout"
                    candidates.append((ordinal, where, problem))
        if not candidates:
            return None
        _, where, problem = min(candidates)
        return where, problem, bad - 1

    def raise_if_bad(self) -> None:
        """Raise RecipeError naming the first bad record, what is wrong and how to fix it, and how many others."""
        found = self.first_problem()
        if found is None:
            return
        where, problem, others = found
        more = f" {others} more record{'s have' if others != 1 else ' has'} problems too." if others else ""
        raise RecipeError(f"{where}: {problem}.{more}")
