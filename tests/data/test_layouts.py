"""Datasets where users keep them, split as they are split: local files and folders as `load_dataset` resolves them,
a `save_to_disk` folder, alignment-handbook's `dataset_splits` and `dataset_mixer`, held-out sizes as row counts,
and the run record from which evaluation rebuilds the same splits. No row of a split named for anything but training
ever reaches training."""

import json
import re
from types import SimpleNamespace

import pytest
from datasets import Dataset, DatasetDict

from goft.data.arguments import DataArguments
from goft.data.loading import load_recipe_dataset, rows_fingerprint
from goft.data.stages import DPO, SFT
from goft.errors import RecipeError
from goft.evaluation.runner import held_out_split
from goft.io.outputs import mark_finished
from goft.training.recipe import RecipeRun


def rows(split: str, n: int) -> list[dict]:
    """SFT rows that say which split they were written for."""
    return [
        {"messages": [{"role": "user", "content": f"{split} {i}"}, {"role": "assistant", "content": "ok"}], "n": i}
        for i in range(n)
    ]


def origin(row: dict) -> str:
    return row["messages"][0]["content"].split()[0]


def write(path, split_rows: list[dict]):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in split_rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(split_rows))
    else:
        Dataset.from_list(split_rows).to_parquet(str(path))


def files(*names):
    """A layout of files, each holding 6 rows of the split its name starts with."""

    def make(root):
        for name in names:
            write(root / name, rows(name.split("/")[-1].split("-")[0].split(".")[0], 6))
        return root

    return make


def write_text_rows(path):
    path.write_text("".join(json.dumps({"text": f"note {i}"}) + "\n" for i in range(4)))
    return path.parent


def declared_configs(root):
    """A folder whose README declares two configs, as the Hub's dataset cards do; `chat` has `train` and `test`."""
    files("chat/train-00000-of-00001.parquet", "chat/test-00000-of-00001.parquet", "other/validation.parquet")(root)
    card = ["---", "configs:", "- config_name: chat", "  data_files:", "  - split: train", "    path: chat/train-*"]
    card += ["  - split: test", "    path: chat/test-*", "- config_name: other", "  data_files: other/*.parquet", "---"]
    (root / "README.md").write_text("\n".join(card) + "\n")
    return root


def saved_dict(root):
    DatasetDict({s: Dataset.from_list(rows(s, 6)) for s in ("train", "test", "validation")}).save_to_disk(str(root))
    return root


def saved_dataset(root):
    Dataset.from_list(rows("train", 10)).save_to_disk(str(root))
    return root


# layout, the recipe's split keys, the splits each output split's rows must come from
LAYOUTS = {
    "flat-jsonl": (files("train.jsonl", "test.jsonl", "validation.jsonl"), {}, ("train", "test")),
    "flat-json-and-eval": (files("train.json", "validation.json"), {"dataset_test_split": "validation"}, None),
    "flat-parquet": (files("train.parquet", "test.parquet"), {}, ("train", "test")),
    "flat-train-only": (files("train.jsonl", "validation.jsonl"), {}, ("train", "train")),  # carved
    "data-folder": (files("data/train.jsonl", "data/test.jsonl"), {}, ("train", "test")),
    "hub-shards": (
        files(
            "data/train_sft-00000-of-00002.parquet",
            "data/train_sft-00001-of-00002.parquet",
            "data/test_sft-00000-of-00001.parquet",
            "data/train_gen-00000-of-00001.parquet",
            "data/test_gen-00000-of-00001.parquet",
        ),
        {"dataset_splits": ["train_sft", "test_sft"]},
        ("train_sft", "test_sft"),
    ),
    "hub-shards-split-keys": (
        files("data/train_prefs-00000-of-00001.parquet", "data/test_prefs-00000-of-00001.parquet"),
        {"dataset_train_split": "train_prefs", "dataset_test_split": "test_prefs"},
        ("train_prefs", "test_prefs"),
    ),
    "declared-configs": (declared_configs, {"dataset_config": "chat"}, ("train", "test")),
    "save-to-disk-dict": (saved_dict, {}, ("train", "test")),
    "save-to-disk-dataset": (saved_dataset, {}, ("train", "train")),  # its one split is `train`; a test is carved
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_row_of_another_split_reaches_training(tmp_path, layout):
    make, keys, origins = LAYOUTS[layout]
    root = make(tmp_path / "data")
    dataset = load_recipe_dataset(DataArguments(dataset_name=str(root), **keys), SFT, seed=0)
    train_split, test_split = keys.get("dataset_train_split", "train"), keys.get("dataset_test_split", "test")
    assert list(dataset) == [train_split, test_split]
    expected = origins or ("train", "validation")
    assert {origin(row) for row in dataset[train_split]} == {expected[0]}
    assert {origin(row) for row in dataset[test_split]} == {expected[1]}
    assert dataset[train_split].column_names == ["messages"]  # `n`, an extra column, is dropped
    if expected[0] == expected[1]:  # carved: no row in both
        assert not {repr(r) for r in dataset[train_split]} & {repr(r) for r in dataset[test_split]}


def test_a_single_file_of_each_format_is_the_training_split(tmp_path):
    for name in ("a.jsonl", "a.json", "a.parquet"):
        write(tmp_path / name, rows("train", 10))
        assert len(load_recipe_dataset(DataArguments(dataset_name=str(tmp_path / name)), SFT, seed=0)["train"]) == 9
    (tmp_path / "a.csv").write_text("text,id\n" + "".join(f"note {i},{i}\n" for i in range(10)))
    dataset = load_recipe_dataset(DataArguments(dataset_name=str(tmp_path / "a.csv")), SFT, seed=0)
    assert dataset["train"].column_names == ["text"]


BAD_LAYOUTS = {
    "no-train-file": (files("facts.jsonl", "facts_test.jsonl"), {}, "has no split 'train'; it has ['test']"),
    "split-key-missing": (
        files("data/train_sft-00000-of-00001.parquet"),
        {"dataset_train_split": "train_prefs"},
        "has no split 'train_prefs'; it has ['train_sft']",
    ),
    "no-data-files": (files("notes.txt"), {}, "holds no .json/.jsonl/.csv/.parquet files"),
    "config-not-declared": (declared_configs, {"dataset_config": "chats"}, "declares the configs ['chat', 'other']"),
    "config-not-named": (declared_configs, {}, "name one with `config` (`dataset_config`), not None"),
    "config-without-card": (files("train.jsonl"), {"dataset_config": "chat"}, "declares no configs (README.md)"),
    "mixed-formats": (files("train.jsonl", "test.parquet"), {}, "mixes data formats (json, parquet)"),
    "splits-name-two-trains": (
        files("train.jsonl"),
        {"dataset_splits": ["train", "train_gen"]},
        "names 2 training splits",
    ),
    "splits-name-neither": (files("train.jsonl"), {"dataset_splits": ["dev"]}, "which is neither a training split"),
    "test-split-of-another-type": (
        lambda root: files("train.jsonl")(root) and write_text_rows(root / "test.jsonl"),
        {},
        "The data mixes dataset types that stay different once normalised (split 'train': conversational",
    ),
    "count-leaves-nothing": (files("train.jsonl"), {"dataset_test_size": 6}, "holds out 6 and leaves none"),
    "size-neither-share-nor-count": (files("train.jsonl"), {"dataset_test_size": 2.5}, "a whole number of rows"),
}


@pytest.mark.parametrize("name", BAD_LAYOUTS)
def test_a_layout_without_the_splits_asked_for_is_refused_in_one_line(tmp_path, name):
    make, keys, expected = BAD_LAYOUTS[name]
    (tmp_path / "data").mkdir()
    root = make(tmp_path / "data")
    with pytest.raises(RecipeError) as refused:
        load_recipe_dataset(DataArguments(dataset_name=str(root), **keys), SFT, seed=0)
    assert expected in str(refused.value) and "\n" not in str(refused.value), str(refused.value)


def test_held_out_sizes_may_be_row_counts(tmp_path):
    write(tmp_path / "a.jsonl", rows("train", 20))
    write(tmp_path / "b.jsonl", rows("train", 20))
    name = str(tmp_path / "a.jsonl")
    assert len(load_recipe_dataset(DataArguments(dataset_name=name, dataset_test_size=5), SFT, 0)["test"]) == 5
    mixture = {"datasets": [{"id": name}, {"id": str(tmp_path / "b.jsonl")}], "test_split_size": 7}
    assert len(load_recipe_dataset(DataArguments(dataset_mixture=mixture), SFT, 0)["test"]) == 7
    trl = [{"path": "json", "data_files": name}]
    assert len(load_recipe_dataset(DataArguments(datasets=trl, test_split_size=3), SFT, 0)["test"]) == 3
    with pytest.raises(RecipeError, match=re.escape("it would hold out 40 and leave none to train on")):
        load_recipe_dataset(DataArguments(dataset_mixture={**mixture, "test_split_size": 40}), SFT, 0)


def mixer_data(tmp_path):
    """Two Hub-style folders, with their splits named as alignment-handbook's datasets name them."""
    for name, count in (("one", 10), ("two", 20)):
        for split in ("train_sft", "test_sft", "train_gen"):
            write(tmp_path / name / "data" / f"{split}-00000-of-00001.parquet", rows(f"{name}:{split}", count))
    return str(tmp_path / "one"), str(tmp_path / "two")


def test_dataset_mixer_takes_the_first_rows_of_the_train_splits_and_all_of_the_test_splits(tmp_path):
    one, two = mixer_data(tmp_path)
    args = DataArguments(dataset_mixer={one: 0.5, two: 0.25}, dataset_splits=["train_sft", "test_sft"])
    dataset = load_recipe_dataset(args, SFT, seed=0)
    train = [row["messages"][0]["content"] for row in dataset["train"]]
    assert sorted(train) == sorted([f"one:train_sft {i}" for i in range(5)] + [f"two:train_sft {i}" for i in range(5)])
    assert train != sorted(train, key=lambda t: (t.split()[0], int(t.split()[1])))  # shuffled with the seed 42
    test = {row["messages"][0]["content"].split()[0] for row in dataset["test"]}
    assert test == {"one:test_sft", "two:test_sft"} and len(dataset["test"]) == 30
    again = load_recipe_dataset(args, SFT, seed=123)  # the handbook's fixed seed, not the run's
    assert rows_fingerprint(again["train"]) == rows_fingerprint(dataset["train"])
    carved = load_recipe_dataset(
        DataArguments(dataset_mixer={one: 1.0}, dataset_splits=["train_sft"], dataset_test_size=2), SFT, seed=0
    )
    assert [len(carved["train"]), len(carved["test"])] == [8, 2]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"dataset_mixer": {"x": 1.5}}, "it must be in (0, 1]"),
        ({"dataset_mixer": []}, "must be a mapping of datasets to fractions"),
        ({"dataset_mixer": {"x": 1.0}, "dataset_splits": ["test"]}, "names no training split"),
        ({"dataset_mixer": {"x": 1.0}, "dataset_configs": ["a", "b"]}, "one config per dataset of `dataset_mixer` (1)"),
        ({"dataset_mixer": {"x": 1.0}, "dataset_name": "y"}, "Both `dataset_name` and `dataset_mixer`"),
        ({"dataset_configs": ["a"], "dataset_name": "y"}, "`dataset_configs` goes with `dataset_mixer`"),
    ],
)
def test_a_bad_dataset_mixer_is_refused_before_anything_loads(keys, expected, monkeypatch):
    from goft.data import loading

    monkeypatch.setattr(loading, "load_dataset", lambda *a, **k: pytest.fail("loaded before the keys were checked"))
    with pytest.raises(RecipeError) as refused:
        load_recipe_dataset(DataArguments(**keys), SFT, seed=0)
    assert expected in str(refused.value), str(refused.value)


def recorded_run(folder, data_args, stage, seed: int = 3, text_field: str = "text"):
    """The splits a run would train on and hold out, and its goft_run.json as `RecipeRun.data_record` writes it."""
    dataset = load_recipe_dataset(data_args, stage, seed=seed, text_field=text_field)
    run = SimpleNamespace(
        data_args=data_args,
        training_args=SimpleNamespace(seed=seed, dataset_text_field=text_field),
        train_dataset=dataset[data_args.dataset_train_split],
        spec={"data": {name: rows_fingerprint(split) for name, split in dataset.items()}},
    )
    folder.mkdir()
    mark_finished(str(folder), {"stage": stage.name, "data": RecipeRun.data_record(run)})
    return dataset


def test_evaluation_rebuilds_the_splits_of_every_new_source_from_the_run_record(tmp_path, monkeypatch):
    one, two = mixer_data(tmp_path)
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(
        "".join(
            json.dumps({"prompt": f"q{i}", "chosen": chat_pair(i, "yes"), "rejected": chat_pair(i, "no"), "s": i})
            + "\n"
            for i in range(12)
        )
    )
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "train.csv").write_text("body\n" + "".join(f"note {i}\n" for i in range(12)))
    monkeypatch.chdir(tmp_path)  # relative paths in the recipe are recorded absolute
    runs = {
        "mixer": (DataArguments(dataset_mixer={"one": 0.5, "two": 1.0}, dataset_splits=["train_sft"]), SFT, "text"),
        "splits": (DataArguments(dataset_name="one", dataset_splits=["train_gen", "test_sft"]), SFT, "text"),
        "implicit": (DataArguments(dataset_name="prefs.jsonl", dataset_test_size=3), DPO, "text"),
    }
    for name, (args, stage, text_field) in runs.items():
        expected = recorded_run(tmp_path / name, args, stage, text_field=text_field)
        monkeypatch.chdir(tmp_path / name)  # evaluation runs elsewhere
        test = held_out_split(tmp_path / name)  # refuses data whose fingerprints differ from the record's
        assert rows_fingerprint(test) == rows_fingerprint(expected["test"]), name
        monkeypatch.chdir(tmp_path)
    recorded_run(tmp_path / "text-field", DataArguments(dataset_name="notes"), SFT, text_field="body")
    with pytest.raises(RecipeError, match=re.escape("language modeling rows (`text`) have no answer to score")):
        held_out_split(tmp_path / "text-field")  # its rows were read with the recorded text column, then refused


def chat_pair(i, answer):
    return [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": answer}]


def test_trl_and_handbook_members_read_every_layout(tmp_path):
    write(tmp_path / "a.parquet", rows("train", 6))
    saved = saved_dict(tmp_path / "saved")
    hub_style = files("data/train_sft-00000-of-00001.parquet", "data/test_sft-00000-of-00001.parquet")(tmp_path / "hub")
    trl = [{"path": "parquet", "data_files": str(tmp_path / "a.parquet")}, {"path": str(saved)}]
    dataset = load_recipe_dataset(DataArguments(datasets=trl, test_split_size=2), SFT, seed=0)
    mixture = {"datasets": [{"id": str(saved), "split": "train"}, {"id": str(hub_style), "split": "train_sft"}]}
    mixed = load_recipe_dataset(DataArguments(dataset_mixture=mixture, dataset_test_size=2), SFT, seed=0)
    for split in (*dataset.values(), *mixed.values()):
        assert {origin(row) for row in split} <= {"train", "train_sft"}
    assert len(dataset["train"]) == len(mixed["train"]) == 10
