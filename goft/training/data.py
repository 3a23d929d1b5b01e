"""Recipe datasets: local JSON/JSONL files or folders, or Hub ids; checked for their columns; split if needed."""

import json
import os
from pathlib import Path

from datasets import DatasetDict, load_dataset

from .errors import RecipeError

SFT_COLUMNS = ("messages",)
DPO_COLUMNS = ("prompt", "chosen", "rejected")
JSON_SUFFIXES = (".json", ".jsonl")


def _local_json_files(path: Path) -> list[str]:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in JSON_SUFFIXES)
    if not files:
        raise RecipeError(f"The dataset folder {str(path)!r} holds no .json or .jsonl files.")
    for file in files:
        if file.suffix not in JSON_SUFFIXES:
            raise RecipeError(f"The dataset file {str(file)!r} is not .json or .jsonl.")
        if file.stat().st_size == 0:
            raise RecipeError(f"The dataset file {str(file)!r} is empty.")
    return [str(f) for f in files]


def _check_json_records(file: str) -> None:
    """Malformed JSON anywhere in a file is reported with its file and line, before datasets' own, vaguer, error."""
    with open(file, encoding="utf-8") as handle:
        if file.endswith(".jsonl"):
            numbered = ((number, line.rstrip("\r\n")) for number, line in enumerate(handle, start=1) if line.strip())
        else:
            numbered = [(1, handle.read())]
        for first_line, text in numbered:
            try:
                json.loads(text)
            except json.JSONDecodeError as error:
                line = first_line + error.lineno - 1
                kind = "JSONL (one JSON object per line)" if file.endswith(".jsonl") else "JSON"
                raise RecipeError(f"The dataset file {file!r} is not valid {kind}: {error.msg} (line {line}, "
                                  f"column {error.colno}).") from None


def load_recipe_dataset(data_args, required_columns: tuple[str, ...], seed: int) -> DatasetDict:
    """Train and test splits with `required_columns`; a test split is carved out when the data has none."""
    name = data_args.dataset_name
    if not name:
        raise RecipeError("`dataset_name` is required: a local .json/.jsonl file or folder, or a Hub dataset id.")
    local = Path(os.path.expanduser(name))
    if local.exists():
        files = _local_json_files(local)
        for file in files:
            _check_json_records(file)
        dataset = load_dataset("json", data_files={data_args.dataset_train_split: files})
    elif name.endswith(JSON_SUFFIXES) or name.startswith((".", "/", "~")):
        raise RecipeError(f"The dataset file {name!r} does not exist.")
    else:
        dataset = load_dataset(name, name=data_args.dataset_config)
    train_split, test_split = data_args.dataset_train_split, data_args.dataset_test_split
    if train_split not in dataset:
        raise RecipeError(f"The dataset {name!r} has no split {train_split!r}; it has {sorted(dataset)}.")
    missing = [c for c in required_columns if c not in dataset[train_split].column_names]
    if missing:
        raise RecipeError(f"The dataset {name!r} lacks the column(s) {missing} this stage needs "
                          f"({', '.join(required_columns)}); its columns are {dataset[train_split].column_names}.")
    if len(dataset[train_split]) == 0:
        raise RecipeError(f"The dataset {name!r} has no rows in split {train_split!r}.")
    if test_split not in dataset:
        if not 0 < data_args.dataset_test_size < 1:
            raise RecipeError(f"`dataset_test_size` must be in (0, 1), got {data_args.dataset_test_size}.")
        held_out = dataset[train_split].train_test_split(test_size=data_args.dataset_test_size, seed=seed)
        dataset = DatasetDict({train_split: held_out["train"], test_split: held_out["test"]})
    return dataset
