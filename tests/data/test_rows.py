"""Every dataset record is checked before any model is loaded: a bad one is named by its file and line (a .json
array's record and line, a Hub split's row index), with what is wrong and how to fix it, in one message."""

import json
import re
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from goft.data import loading as data_module
from goft.data.arguments import DataArguments
from goft.data.dataset_types import check_split
from goft.data.loading import load_recipe_dataset, looks_local
from goft.data.rows import RowCheck, dpo_row_problem, sft_row_problem
from goft.data.stages import DPO, SFT
from goft.errors import RecipeError
from tests.support.data import dpo_rows, sft_rows, write_jsonl
from tests.support.recipes import REPO


def user(text="hi"):
    return {"role": "user", "content": text}


def assistant(text="ok"):
    return {"role": "assistant", "content": text}


def load(path, columns=SFT, **kwargs):
    return load_recipe_dataset(DataArguments(dataset_name=str(path), **kwargs), columns, seed=0)


def refusal(path, columns=SFT, **kwargs) -> str:
    with pytest.raises(RecipeError) as info:
        load(path, columns, **kwargs)
    return str(info.value)


def with_bad(rows: list[dict], bad: dict[int, dict], path: Path) -> Path:
    """`rows` with the 1-based lines in `bad` replaced, written as JSONL."""
    return write_jsonl([bad.get(number, row) for number, row in enumerate(rows, start=1)], path)


pytestmark = pytest.mark.usefixtures("no_hub_datasets")  # local data never reaches the Hub


# ---- good data passes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, columns",
    [("demo_sft.jsonl", SFT), ("facts_sft.jsonl", SFT), ("overwrite_sft.jsonl", SFT), ("demo_dpo.jsonl", DPO)],
)
def test_shipped_data_passes(name, columns):
    dataset = load(REPO / "data" / name, columns)
    lines = sum(1 for line in (REPO / "data" / name).read_text().splitlines() if line.strip())
    assert len(dataset["train"]) + len(dataset["test"]) == lines


def test_recipe_rows_pass_and_keep_their_split(tmp_path):
    sft = load(write_jsonl(sft_rows(16), tmp_path / "sft.jsonl"), dataset_test_size=0.25)
    assert (len(sft["train"]), len(sft["test"])) == (12, 4)
    dpo = load(write_jsonl(dpo_rows(8), tmp_path / "dpo.jsonl"), DPO)
    assert (len(dpo["train"]), len(dpo["test"])) == (7, 1)


def test_good_variants_pass(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": ""}, user(), assistant(""), user("and?"), assistant("yes")]},
        {
            "messages": [
                user(),
                {"role": "assistant", "content": "", "tool_calls": [{"name": "f"}]},
                {"role": "tool", "content": "42"},
                assistant("42"),
            ]
        },
    ]
    assert len(load(write_jsonl(rows * 2, tmp_path / "sft.jsonl"))["train"]) == 3
    strings = [{"prompt": "say", "chosen": "yes", "rejected": "no"}] * 4
    assert len(load(write_jsonl(strings, tmp_path / "dpo.jsonl"), DPO)["train"]) == 3


def test_blank_lines_and_a_byte_order_mark_are_accepted(tmp_path):
    path = tmp_path / "sft.jsonl"
    lines = [json.dumps(row) for row in sft_rows(4)]
    path.write_bytes(b"\xef\xbb\xbf" + ("\n\n".join(lines) + "\n\n").encode())
    assert len(load(path, dataset_test_size=0.25)["train"]) == 3


def test_evaluation_loads_without_checking_records(tmp_path):
    rows = sft_rows(4) + [{"messages": [{"role": "human", "content": "hi"}, assistant()]}]
    assert len(load(write_jsonl(rows, tmp_path / "any.jsonl"), None)["train"]) == 4


# ---- SFT records --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, expected",
    [
        ({"messages": []}, "`messages` is an empty list"),
        (
            {"messages": [{"role": "user", "content": None}, assistant()]},
            "message 1 of `messages` (user) has `content` null",
        ),
        ({"messages": [user(), {"role": "assistant"}]}, "message 2 of `messages` (assistant) has no `content`"),
        (
            {"messages": [{"role": "human", "content": "hi"}, assistant()]},
            "the role 'human', which most chat templates do not know; use 'user'",
        ),
        (
            {"messages": [{"role": "User", "content": "hi"}, assistant()]},
            "the role 'User', which most chat templates do not know; use 'user'",
        ),
        ({"messages": [{"role": "developer", "content": "be brief"}, user(), assistant()]}, "use 'system'"),
        ({"messages": [{"role": "narrator", "content": "x"}, assistant()]}, "use one of system, user, assistant, tool"),
        ({"messages": [user("hi")]}, "no assistant turn with text"),
        ({"messages": [user("hi"), assistant("  ")]}, "no assistant turn with text"),
        ({"messages": [{"content": "hi"}, assistant()]}, "message 1 of `messages` has no `role`"),
        ({"messages": [{"from": "human", "value": "hi"}]}, "ShareGPT"),
        ({"messages": [user(), {"role": "assistant", "content": [{"type": "text", "text": "x"}]}]}, "`content` a list"),
        ({"messages": "hello"}, "`messages` is a string, not a list"),
        ({"messages": [user(), "ok"]}, "message 2 of `messages` is a string, not an object"),
        ({"messages": None}, "`messages` is missing or null"),
        ({"text": "hello"}, "this record holds language modeling text (`text`), but 7 other records hold a `messages`"),
    ],
)
def test_bad_sft_record_is_named_by_file_and_line(tmp_path, bad, expected):
    path = with_bad(sft_rows(8), {5: bad}, tmp_path / "sft.jsonl")
    message = refusal(path)
    assert message.startswith(f"The dataset file {str(path)!r}, line 5: "), message
    assert expected in message, message
    assert "more record" not in message and "Traceback" not in message


def test_other_bad_records_are_counted_not_listed(tmp_path):
    path = with_bad(
        sft_rows(10), {3: {"messages": []}, 6: {"messages": [user()]}, 9: {"messages": []}}, tmp_path / "sft.jsonl"
    )
    message = refusal(path)
    assert "line 3: `messages` is an empty list" in message and message.endswith("2 more records have problems too.")
    assert "line 6" not in message and "line 9" not in message


def test_line_numbers_count_blank_lines_and_files_of_a_folder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(sft_rows(4), folder / "a.jsonl")
    lines = [json.dumps(row) for row in sft_rows(3)] + ["", json.dumps({"messages": [user()]})]
    (folder / "b.jsonl").write_text("\n\n".join(lines) + "\n")
    message = refusal(folder)
    assert message.startswith(f"The dataset file {str(folder / 'b.jsonl')!r}, line 9: "), message
    assert "1 more" not in message


def test_json_array_records_are_named_by_number_and_line(tmp_path):
    path = tmp_path / "sft.json"
    rows = sft_rows(3) + [{"messages": [{"role": "gpt", "content": "x"}]}]
    path.write_text(json.dumps(rows, indent=2))
    message = refusal(path)
    line = [n for n, text in enumerate(path.read_text().splitlines(), start=1) if text == "  {"][3]  # record 4's
    assert f"{str(path)!r}, record 4 (line {line}): message 1 of `messages` has the role 'gpt'" in message, message
    assert "use 'assistant'" in message


def test_json_file_must_hold_an_array_of_objects(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(sft_rows(1)[0]))
    assert "holds an object, not an array of records" in refusal(path)
    path.write_text(json.dumps(["hello", "world"]))
    assert f"{str(path)!r}, record 1 (line 1): the record is a string, not a JSON object" in refusal(path)


def test_a_jsonl_line_that_is_no_object_is_refused_for_every_stage(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(sft_rows(1)[0]) + "\n[1, 2]\n")
    for columns in (SFT, None):
        assert f"{str(path)!r}, line 2: the record is a list, not a JSON object" in refusal(path, columns)


def test_a_record_with_none_of_the_stages_columns_is_named_with_its_columns(tmp_path):
    path = write_jsonl([{"text": "hello", "label": 1}] * 4, tmp_path / "text.jsonl")
    message = refusal(path, DPO)
    assert ", line 1: the record has none of the columns the DPO stage reads" in message
    assert "`prompt`/`chosen`/`rejected`; `chosen`/`rejected`" in message and "['label', 'text']" in message


def test_prompt_completion_pairs_are_checked_too():
    assert sft_row_problem({"prompt": "2+2=", "completion": "4"}) is None
    assert sft_row_problem({"prompt": [user("2+2?")], "completion": [assistant("4")]}) is None
    assert "`completion` is an empty string" in sft_row_problem({"prompt": "2+2=", "completion": " "})
    assert "`prompt` is a string but `completion` is a conversation" in sft_row_problem(
        {"prompt": "2+2=", "completion": [assistant("4")]}
    )
    assert "last turn of `completion` is 'user'" in sft_row_problem({"prompt": [user()], "completion": [user()]})
    assert "`prompt` ends with a system turn" in sft_row_problem(
        {"prompt": [{"role": "system", "content": "be brief"}], "completion": [assistant()]}
    )


def test_a_messages_record_among_pairs_breaks_the_layout(tmp_path):
    check = RowCheck("sft", ())
    for number, record in enumerate([{"prompt": "a", "completion": "b"}] * 3 + [{"messages": [user(), assistant()]}]):
        check.add(record, f"line {number + 1}")
    where, problem, others = check.first_problem()
    assert (
        where == "line 4"
        and "holds a `messages` conversation, but 3 other records hold a prompt/completion pair of strings" in problem
        and others == 0
    )


# ---- DPO records --------------------------------------------------------------------------------------------------


def dpo(prompt, chosen, rejected):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


@pytest.mark.parametrize(
    "bad, expected",
    [
        (dpo([user("say")], [assistant("yes")], [assistant("yes")]), "`chosen` and `rejected` are identical"),
        (dpo([user("say")], [assistant("")], [assistant("no")]), "the assistant's reply in `chosen` is empty"),
        (dpo([user("say")], "", [assistant("no")]), "`chosen` is an empty string"),
        (dpo([user("say")], [], [assistant("no")]), "`chosen` is an empty list"),
        (dpo([user("say")], None, [assistant("no")]), "`chosen` is missing or null"),
        (dpo([user("say")], [assistant("yes")], [user("no")]), "the last turn of `rejected` is 'user'"),
        (
            dpo("say", [assistant("yes")], [assistant("no")]),  # TRL reads the prompt out of the conversations
            "`chosen` and `rejected` share no start, so there is no prompt",
        ),
        (
            dpo([user("say")], [{"role": "assistant", "content": None}], [assistant("no")]),
            "message 1 of `chosen` (assistant) has `content` null",
        ),
        (
            dpo([{"role": "system", "content": "x"}], [assistant("yes")], [assistant("no")]),
            "`prompt` ends with a system",
        ),
        (dpo([user("say")], 3, [assistant("no")]), "`chosen` is a number"),
        ({"prompt": [user("say")], "chosen": [assistant("yes")]}, "`rejected` is missing or null"),
    ],
)
def test_bad_dpo_record_is_named_by_file_and_line(tmp_path, bad, expected):
    path = with_bad(dpo_rows(8), {7: bad}, tmp_path / "dpo.jsonl")
    message = refusal(path, DPO)
    assert message.startswith(f"The dataset file {str(path)!r}, line 7: "), message
    assert expected in message, message


def test_mixed_layouts_name_the_odd_record_out(tmp_path):
    path = with_bad(dpo_rows(8), {4: dpo("hi", "yes", "no")}, tmp_path / "dpo.jsonl")
    message = refusal(path, DPO)
    assert message.startswith(
        f"The dataset file {str(path)!r}, line 4: this record holds plain strings, but 7 other "
        "records hold conversations"
    ), message
    # the first record is the odd one out: it is named, not the seven after it
    path = with_bad(dpo_rows(8), {1: dpo("hi", "yes", "no")}, tmp_path / "first.jsonl")
    assert ", line 1: this record holds plain strings" in refusal(path, DPO)


def test_mixed_layouts_and_bad_records_are_counted_once(tmp_path):
    rows = dpo_rows(9)
    path = with_bad(
        rows,
        {2: dpo("a", "b", "c"), 5: dpo("a", "b", "c"), 7: dpo([user()], [], [assistant()])},
        tmp_path / "dpo.jsonl",
    )
    message = refusal(path, DPO)
    assert ", line 2: this record holds plain strings" in message and message.endswith(
        "2 more records have problems too."
    )


def test_dpo_record_problem_accepts_recipe_rows():
    assert all(dpo_row_problem(row) is None for row in dpo_rows(5))
    assert dpo_row_problem(dpo("say", "yes", "no")) is None


# ---- encoding, size, paths ----------------------------------------------------------------------------------------


def test_non_utf8_file_names_line_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.jsonl"
    first = (json.dumps(sft_rows(1)[0]) + "\n").encode()
    second = json.dumps({"messages": [user("café"), assistant()]}, ensure_ascii=False).encode("latin-1")
    path.write_bytes(first + second + b"\n")
    message = refusal(path)
    offset = len(first) + second.index(b"\xe9")
    assert f"{str(path)!r} is not UTF-8: the byte 0xe9 at line 2 (byte offset {offset} in the file)" in message
    assert "Re-encode the file as UTF-8" in message


def test_non_utf8_json_file_names_its_line(tmp_path):
    path = tmp_path / "latin1.json"
    content = b'[\n  {"messages": []},\n  {"x": "caf\xe9"}\n]'
    path.write_bytes(content)
    offset = content.index(b"\xe9")
    assert f"the byte 0xe9 at line 3 (byte offset {offset} in the file)" in refusal(path)


def test_one_row_is_too_few_to_hold_out_a_test_split(tmp_path):
    message = refusal(write_jsonl(sft_rows(1), tmp_path / "one.jsonl"))
    assert "has 1 row in split 'train', too few to hold out a test split" in message
    assert "`dataset_test_size` 0.1 holds out 1 and leaves none to train on" in message
    assert "add rows" in message


def test_too_large_a_test_size_names_one_that_fits(tmp_path):
    path = write_jsonl(sft_rows(3), tmp_path / "three.jsonl")
    message = refusal(path, dataset_test_size=0.9)
    assert "has 3 rows" in message and "at most 0.66" in message
    assert [len(s) for s in load(path, dataset_test_size=0.66).values()] == [1, 2]


def test_only_blank_lines_hold_no_records(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text("\n \n")
    assert "holds no records" in refusal(path)


@pytest.mark.parametrize(
    "name",
    [
        "missing.jsonl",
        "missing.parquet",
        "data/missing.csv",
        "./missing",
        "../missing",
        "~/missing-goft-data",
        "/no/such/folder",
        "a/b/c",
        "folder/",
        "owner/..name",
        "with space",
        "C:\\data\\train.jsonl",
    ],
)
def test_local_looking_paths_that_do_not_exist_are_never_hub_ids(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    assert looks_local(name)
    message = refusal(name)
    assert f"The dataset {name!r} does not exist" in message


def test_hub_ids_go_to_the_hub(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    asked = []
    monkeypatch.setattr(
        data_module,
        "load_dataset",
        lambda path, **kwargs: asked.append(path) or DatasetDict({"train": Dataset.from_list(sft_rows(4))}),
    )
    for name in ("owner/name", "imdb", "Org-1/set_v2.0"):
        assert not looks_local(name)
        load(name)
    assert asked == ["owner/name", "imdb", "Org-1/set_v2.0"]


def test_hub_rows_are_named_by_split_and_row_index(monkeypatch):
    train = Dataset.from_list(dpo_rows(6) + [dpo([user("say")], [assistant("a")], [assistant("a")])])
    test = Dataset.from_list(dpo_rows(2))
    monkeypatch.setattr(data_module, "load_dataset", lambda path, **kwargs: DatasetDict({"train": train, "test": test}))
    message = refusal("owner/prefs", DPO)
    assert message.startswith(
        "The dataset 'owner/prefs', split 'train', row index 6: `chosen` and `rejected` are identical"
    ), message
    bad_test = Dataset.from_list([{"messages": [user()]}, {"messages": sft_rows(1)[0]["messages"]}])
    monkeypatch.setattr(
        data_module,
        "load_dataset",
        lambda path, **kwargs: DatasetDict({"train": Dataset.from_list(sft_rows(4)), "test": bad_test}),
    )
    assert refusal("owner/chat").startswith(
        "The dataset 'owner/chat', split 'test', row index 0: `messages` has no assistant turn"
    )


def test_hub_rows_with_missing_keys_are_null():
    rows = Dataset.from_list([{"messages": [user(), assistant()]}, {"messages": [{"role": "user"}, assistant()]}])
    with pytest.raises(RecipeError, match=re.escape("row index 1: message 1 of `messages` (user) has `content` null")):
        check_split(rows, SFT, "text", "The dataset 'x', split 'train'")


def test_malformed_json_is_named_by_its_own_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(sft_rows(1)[0]) + "\n" + '{"messages": [{"role": "user"\n')
    assert "is not valid JSONL (one JSON object per line): Expecting ',' delimiter (line 2, column" in refusal(path)
