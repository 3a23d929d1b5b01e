"""Every dataset type TRL documents, in each stage that reads it: recognised, checked row by row, and normalised to
the stage's one form before anything else sees it."""

import re

import pytest

from goft.data.arguments import DataArguments
from goft.data.dataset_types import row_type, split_prompt
from goft.data.loading import load_recipe_dataset
from goft.data.stages import DPO, IMPLICIT_PREFERENCE, LANGUAGE_MODELING, PREFERENCE, SFT
from goft.errors import RecipeError
from tests.support.data import write_jsonl
from tests.support.dataset_types import TYPES, assistant, chat, user


def load(path, stage, text_field="text", **keys):
    return load_recipe_dataset(DataArguments(dataset_name=str(path), **keys), stage, seed=0, text_field=text_field)


@pytest.mark.parametrize("name", TYPES)
def test_each_type_loads_and_is_normalised_to_its_stages_form(tmp_path, name):
    stage, make, columns, first = TYPES[name]
    dataset = load(write_jsonl([make(i) for i in range(10)], tmp_path / "d.jsonl"), stage, dataset_test_size=2)
    assert [len(dataset["train"]), len(dataset["test"])] == [8, 2]
    for split in dataset.values():
        assert split.column_names == columns
    rows = {repr(row) for split in dataset.values() for row in split}
    assert repr(first) in rows


def test_the_text_column_is_the_sft_configs_dataset_text_field(tmp_path):
    path = write_jsonl([{"body": f"note {i}", "title": "t"} for i in range(10)], tmp_path / "notes.jsonl")
    dataset = load(path, SFT, text_field="body")
    assert dataset["train"].column_names == ["body"]
    with pytest.raises(RecipeError, match=re.escape("none of the columns the SFT stage reads (`messages`; `prompt`")):
        load(path, SFT)


def test_the_prompt_of_an_implicit_pair_is_the_start_both_share_as_trl_reads_it():
    from trl.data_utils import maybe_extract_prompt

    for row in (
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"chosen": chat(0, "yes"), "rejected": chat(0, "no")},
        {"prompt": "question 0", "chosen": chat(0, "yes"), "rejected": chat(0, "no")},
        {"chosen": "ab", "rejected": "abc"},
    ):
        assert split_prompt(row) == maybe_extract_prompt(dict(row)), row
    assert row_type(DPO, {"prompt": "q", "chosen": chat(0), "rejected": chat(1)}) is IMPLICIT_PREFERENCE
    assert row_type(DPO, {"prompt": "q", "chosen": "a", "rejected": "b"}) is PREFERENCE
    assert row_type(SFT, {"text": "x"}) is LANGUAGE_MODELING


BAD_ROWS = {  # stage, a bad row among good ones, what the one `error:` line says
    "text-empty": (SFT, "sft-language-modeling", {"text": " "}, "`text` is an empty string"),
    "text-not-a-string": (SFT, "sft-language-modeling", {"text": ["a"]}, "`text` is a list"),
    "ultrachat-bad-turn": (
        SFT,
        "sft-ultrachat",
        {"prompt": "q", "prompt_id": "p", "messages": [{"role": "human", "content": "q"}, assistant("a")]},
        "the role 'human'",
    ),
    "completion-missing": (SFT, "sft-prompt-completion-standard", {"prompt": "1 + 1 ="}, "`completion` is missing"),
    "types-mixed": (
        SFT,
        "sft-conversational",
        {"text": "a note"},
        "this record holds language modeling text (`text`), but 8 other records hold a `messages` conversation",
    ),
    "implicit-no-shared-start": (
        DPO,
        "dpo-implicit-standard",
        {"chosen": "Blue.", "rejected": "Green."},
        "`chosen` and `rejected` share no start",
    ),
    "implicit-reply-not-assistant": (
        DPO,
        "dpo-implicit-conversational",
        {"chosen": chat(0, "yes"), "rejected": [user("question 0"), user("no")]},
        "the last turn of `rejected` is 'user'",
    ),
    "ultrafeedback-identical": (
        DPO,
        "dpo-ultrafeedback",
        {"prompt": "q", "chosen": chat(0, "yes"), "rejected": chat(0, "yes")},
        "`chosen` and `rejected` are identical",
    ),
    "implicit-among-explicit": (
        DPO,
        "dpo-explicit-standard",
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        "this record holds implicit prompt preference rows of strings",
    ),
}


@pytest.mark.parametrize("name", BAD_ROWS)
def test_a_bad_row_is_refused_with_its_file_and_line_before_any_model(tmp_path, name):
    stage, kind, bad, expected = BAD_ROWS[name]
    rows = [TYPES[kind][1](i) for i in range(8)]
    rows.insert(4, bad)
    path = write_jsonl(rows, tmp_path / "d.jsonl")
    with pytest.raises(RecipeError) as refused:
        load(path, stage)
    message = str(refused.value)
    assert message.startswith(f"The dataset file {str(path)!r}, line 5: ") and expected in message, message
    assert "\n" not in message


def test_a_loaded_parquet_split_is_checked_by_split_and_row(tmp_path):
    from datasets import Dataset

    rows = [TYPES["dpo-implicit-conversational"][1](i) for i in range(6)] + [{"chosen": chat(9), "rejected": []}]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "prefs.parquet"))
    with pytest.raises(RecipeError, match=re.escape("split 'train', row index 6: `rejected` is an empty list")):
        load(tmp_path / "prefs.parquet", DPO)


def test_a_mixture_mixes_types_whose_normalised_forms_agree_and_refuses_the_others(tmp_path):
    explicit = write_jsonl([TYPES["dpo-explicit-conversational"][1](i) for i in range(6)], tmp_path / "a.jsonl")
    feedback = write_jsonl([TYPES["dpo-ultrafeedback"][1](i) for i in range(6)], tmp_path / "b.jsonl")
    implicit = write_jsonl([TYPES["dpo-implicit-conversational"][1](i) for i in range(6)], tmp_path / "c.jsonl")
    mixture = {"datasets": [{"id": str(explicit)}, {"id": str(feedback)}, {"id": str(implicit)}]}
    dataset = load_recipe_dataset(DataArguments(dataset_mixture=mixture), DPO, seed=0)
    assert len(dataset["train"]) + len(dataset["test"]) == 18
    assert dataset["train"].column_names == ["prompt", "chosen", "rejected"]
    # alignment-handbook's members keep only `chosen` and `rejected`: the implicit prompt is read out of them
    handbook = {"datasets": [{"id": str(feedback), "columns": ["chosen", "rejected"]}], "test_split_size": 2}
    assert load_recipe_dataset(DataArguments(dataset_mixture=handbook), DPO, seed=0)["test"][0]["prompt"][0][
        "role"
    ] == ("user")
    notes = write_jsonl([TYPES["sft-language-modeling"][1](i) for i in range(6)], tmp_path / "notes.jsonl")
    chats = write_jsonl([TYPES["sft-conversational"][1](i) for i in range(6)], tmp_path / "chats.jsonl")
    trl = [{"path": "json", "data_files": str(chats)}, {"path": "json", "data_files": str(notes)}]
    with pytest.raises(RecipeError) as refused:
        load_recipe_dataset(DataArguments(datasets=trl), SFT, seed=0)
    message = str(refused.value)
    assert message.startswith("`datasets[1]` ('json'): The mixture mixes dataset types that stay different"), message
    assert "conversational (`messages`)" in message and "language modeling text (`text`)" in message


def test_task_samples_on_text_rows_are_refused_before_any_work(tmp_path):
    path = write_jsonl([TYPES["sft-language-modeling"][1](i) for i in range(10)], tmp_path / "notes.jsonl")
    with pytest.raises(RecipeError, match=re.escape("language modeling rows (`text`) have no answer")):
        load(path, SFT, task_eval_samples=4)
    assert len(load(path, SFT)["train"]) == 9
