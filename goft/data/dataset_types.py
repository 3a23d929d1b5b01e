"""The dataset types a stage reads, as TRL reads them: which type a row is, what is wrong with it, and the one form
each split is normalised to before anything else sees it.

SFT reads conversational rows (`messages`; other columns beside it, such as UltraChat's `prompt` and `prompt_id`, are
extra), prompt-completion rows (`prompt` and `completion`, strings or conversations; the loss is on the completion)
and language modeling rows (the text column, `dataset_text_field`, default `text`). They keep their type. DPO reads
explicit preference rows (`prompt`, `chosen`, `rejected`) and implicit-prompt ones (only `chosen` and `rejected`, or a
`prompt` whose layout differs from theirs, as UltraFeedback's string prompt beside conversations): their prompt is
the start `chosen` and `rejected` share, split off so that every DPO split is explicit. Columns no type reads are
dropped, except `chat_template_kwargs` and `tools`, which TRL reads per row.
"""

from datasets import Dataset

from goft.data.rows import RowCheck, conversation_problem, dpo_row_problem, json_type, row_layout, sft_row_problem
from goft.data.stages import (
    CONVERSATIONAL,
    IMPLICIT_PREFERENCE,
    KEPT_COLUMNS,
    LANGUAGE_MODELING,
    PREFERENCE,
    PROMPT_COMPLETION,
    DatasetType,
    RecipeStage,
)
from goft.errors import RecipeError


def is_conversation(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], dict)


def columns_of(kind: DatasetType, text_field: str = "text") -> tuple[str, ...]:
    """The columns a row of `kind` holds, the text column named `text_field`."""
    return (text_field,) if kind is LANGUAGE_MODELING else kind.columns


def stage_columns(stage: RecipeStage, text_field: str = "text") -> str:
    """The columns of each type the stage reads, for messages: "`messages`; `prompt`/`completion`; `text`"."""
    return "; ".join("/".join(f"`{c}`" for c in columns_of(kind, text_field)) for kind in stage.types)


def row_type(stage: RecipeStage, record: dict, text_field: str = "text") -> DatasetType | None:
    """The type of one row for `stage`, as TRL tells them apart; None when it holds none of the stage's columns."""
    if CONVERSATIONAL in stage.types:  # SFT
        if "messages" in record:
            return CONVERSATIONAL
        if "prompt" in record or "completion" in record:
            return PROMPT_COMPLETION
        return LANGUAGE_MODELING if text_field in record else None
    if "chosen" not in record and "rejected" not in record:
        return None
    prompt = record.get("prompt")
    if prompt is not None and is_conversation(prompt) == is_conversation(record.get("chosen")):
        return PREFERENCE
    return IMPLICIT_PREFERENCE  # TRL extracts the prompt when it is missing or laid out unlike the replies


def split_prompt(record: dict) -> dict:
    """An implicit-prompt row made explicit: the prompt is the longest start `chosen` and `rejected` share (each
    keeps at least its last item); of strings, a space before the replies stays with them."""
    chosen, rejected = record["chosen"], record["rejected"]
    size, shorter = 0, min(len(chosen), len(rejected))
    while size < shorter - 1 and chosen[size] == rejected[size]:
        size += 1
    if isinstance(chosen, str) and size and chosen[size - 1] == " ":
        size -= 1
    return {"prompt": chosen[:size], "chosen": chosen[size:], "rejected": rejected[size:]}


def _text_problem(value, column: str) -> str | None:
    if isinstance(value, str):
        return None if value.strip() else f"`{column}` is an empty string; give it the text"
    return f"`{column}` is {json_type(value)}; give it the text as a string"


def _implicit_problem(record: dict) -> str | None:
    for column in ("chosen", "rejected"):
        value = record.get(column)
        if isinstance(value, (list, tuple)):
            problem = conversation_problem(value, column)
        else:
            problem = _text_problem(value, column) if value is not None else f"`{column}` is missing or null"
        if problem:
            return problem
    if is_conversation(record["chosen"]) != is_conversation(record["rejected"]):
        return "`chosen` and `rejected` must both be strings or both conversations"
    explicit = split_prompt(record)
    if not explicit["prompt"]:
        return (
            "`chosen` and `rejected` share no start, so there is no prompt: give a `prompt` column, or begin "
            "both with the same prompt (an implicit-prompt row)"
        )
    problem = dpo_row_problem(explicit)
    return f"{problem} (the prompt being the start `chosen` and `rejected` share)" if problem else None


def row_problem(stage: RecipeStage, record, text_field: str = "text") -> str | None:
    """What is wrong with one row for `stage`, or None."""
    if not isinstance(record, dict):
        return f"the record is {json_type(record)}, not a JSON object"
    kind = row_type(stage, record, text_field)
    if kind is None:
        return (
            f"the record has none of the columns the {stage.title} stage reads ({stage_columns(stage, text_field)}); "
            f"its columns are {sorted(record)}"
        )
    if kind is LANGUAGE_MODELING:
        return _text_problem(record[text_field], text_field)
    if kind is IMPLICIT_PREFERENCE:
        return _implicit_problem(record)
    own = {column: record.get(column) for column in kind.columns}
    return sft_row_problem(own) if CONVERSATIONAL in stage.types else dpo_row_problem(own)


def row_form(stage: RecipeStage, record: dict, text_field: str = "text", normalised: bool = False) -> str:
    """A good row's type and layout in words (its normalised type's with `normalised`): every row of a dataset has
    the same; the members of a mixture have the same normalised form."""
    kind = row_type(stage, record, text_field)
    if kind is LANGUAGE_MODELING:
        return f"language modeling text (`{text_field}`)"
    if not normalised and kind is not IMPLICIT_PREFERENCE:
        return row_layout(stage.name, record)
    if kind is CONVERSATIONAL:
        return "conversational (`messages`)"
    layout = "conversations" if is_conversation(record[kind.columns[-1]]) else "strings"
    return f"{kind.canonical if normalised else kind.name} rows of {layout}"


def row_check(stage: RecipeStage, text_field: str = "text") -> RowCheck:
    """A `RowCheck` of the stage's types: the first bad row named, the others counted, one type per dataset."""
    return RowCheck(
        stage.name,
        (),
        problem=lambda record: row_problem(stage, record, text_field),
        layout=lambda record: row_form(stage, record, text_field),
    )


def check_split(rows, stage: RecipeStage, text_field: str, where: str) -> None:
    """Every row of a loaded split, named by its index after `where` ("The dataset 'x', split 'train'")."""
    check = row_check(stage, text_field)
    for index, row in enumerate(rows):
        check.add(row, f"{where}, row index {index}")
    check.raise_if_bad()


def normalise(rows: Dataset, stage: RecipeStage, text_field: str = "text") -> Dataset:
    """The split in its stage's one form (its rows checked): the type's columns and those TRL reads per row; an
    implicit prompt split off."""
    if len(rows) == 0:
        return rows
    kind = row_type(stage, rows[0], text_field)
    kept = [column for column in KEPT_COLUMNS if column in rows.column_names]
    if kind is IMPLICIT_PREFERENCE:
        dropped = [column for column in rows.column_names if column not in kept]
        rows = rows.map(split_prompt, remove_columns=dropped, desc="Splitting off the implicit prompt")
        return rows.select_columns([*PREFERENCE.columns, *kept])
    return rows.select_columns([*columns_of(kind, text_field), *kept])


def check_same_form(forms: dict[str, str], where: str) -> None:
    """Refuse a mixture whose members' normalised forms ({member: form}) differ."""
    if len(set(forms.values())) > 1:
        listed = "; ".join(f"{member}: {form}" for member, form in forms.items())
        raise RecipeError(
            f"The {where} mixes dataset types that stay different once normalised ({listed}); mix datasets of one "
            "type (implicit and explicit preference rows mix: both become explicit)."
        )


def accepted_columns(stage: RecipeStage | None, text_field: str = "text") -> tuple[tuple[str, ...], ...]:
    """The columns of each type `stage` reads (none for None): a mixture member's `columns` keeps one of them."""
    return tuple(columns_of(kind, text_field) for kind in stage.types) if stage else ()


def check_task_samples(data_args, train, stage, text_field: str) -> None:
    """Language modeling rows have no answer, so they cannot be scored by exact match."""
    if stage is None or not getattr(data_args, "task_eval_samples", 0) or text_field not in train.column_names:
        return
    if row_type(stage, train[0], text_field) is LANGUAGE_MODELING:
        raise RecipeError(
            f"`task_eval_samples` {data_args.task_eval_samples} scores the exact match of held-out answers, but "
            f"language modeling rows (`{text_field}`) have no answer: set `task_eval_samples: 0`, or train on "
            "conversational or prompt-completion rows."
        )
