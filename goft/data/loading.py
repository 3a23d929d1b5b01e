"""Recipe datasets: local JSON/JSONL files or folders, or Hub ids, or a mixture of them (`mixtures`); checked for
their encoding, JSON, columns and the shape of every record (before any model is loaded); split if needed."""

import hashlib
import json
import math
import os
import re
from pathlib import Path

from datasets import DatasetDict, load_dataset
from datasets.exceptions import DatasetGenerationError
from huggingface_hub import constants

from goft.data import mixtures, trl_datasets
from goft.data.json_files import JSON_SUFFIXES, json_rows, local_json_files
from goft.data.rows import STAGE_COLUMNS, RowCheck, check_rows
from goft.data.stages import DPO_COLUMNS, SFT_COLUMNS
from goft.errors import RecipeError
from goft.io.paths import looks_like_local_path

DATA_SUFFIXES = (*JSON_SUFFIXES, ".parquet", ".csv", ".tsv", ".txt", ".arrow")
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")  # `name` or `owner/name`


def row_stage(required_columns: tuple[str, ...]) -> str | None:
    """The records a stage's columns call for: 'dpo' (preference pairs), 'sft' (conversations), or None (unchecked)."""
    if all(column in required_columns for column in DPO_COLUMNS):
        return "dpo"
    if all(column in required_columns for column in SFT_COLUMNS):
        return "sft"
    return None


def looks_local(name: str) -> bool:
    """Whether a dataset name can only mean a local path: ./ ../ ~ or absolute, a data file's suffix, a backslash,
    or a name that is no Hub id (`name` or `owner/name`)."""
    if looks_like_local_path(name) or os.path.isabs(name) or "\\" in name:
        return True
    return name.lower().endswith(DATA_SUFFIXES) or ".." in name or not HUB_ID.fullmatch(name)


def _check_local_rows(files: list[str], required_columns: tuple[str, ...]) -> int:
    """Read every record of the files (encoding, JSON, objects) and, for a stage's columns, check each record's
    shape; returns how many records there are."""
    stage = row_stage(required_columns)
    check = RowCheck(stage, required_columns) if stage else None
    count = 0
    for file in files:
        for where, record in json_rows(file):
            count += 1
            if check:
                check.add(record, where)
    if check:
        check.raise_if_bad()
    return count


def _check_split_rows(dataset: DatasetDict, name: str, splits: tuple[str, ...], required_columns: tuple[str, ...]):
    """Every row of the given splits (those there are) of a loaded dataset, for a stage's columns."""
    stage = row_stage(required_columns)
    if stage is None:
        return
    for split in (s for s in splits if s in dataset):
        columns = [c for c in STAGE_COLUMNS[stage] if c in dataset[split].column_names]
        check_rows(
            dataset[split].select_columns(columns), stage, required_columns, f"The dataset {name!r}, split {split!r}"
        )


def _largest_test_size(rows: int) -> float | None:
    """The largest `dataset_test_size`, in hundredths, that leaves a row to train on; None below 2 rows."""
    fits = [hundredths / 100 for hundredths in range(1, 100) if math.ceil(hundredths / 100 * rows) < rows]
    return fits[-1] if fits else None


def _check_split_sizes(name: str, rows: int, test_size: float, train_split: str, test_split: str, local: bool) -> None:
    """A test split carved out of `rows` rows must leave at least one to train on."""
    held_out = math.ceil(test_size * rows)  # as datasets' train_test_split counts
    if held_out < rows:
        return
    largest = _largest_test_size(rows)
    fix = (
        f"use a `dataset_test_size` of at most {largest}, or add rows"
        if largest
        else "add rows (holding out a test split needs at least 2)"
    )
    if not local:
        fix += f", or use a dataset that has a {test_split!r} split"
    raise RecipeError(
        f"The dataset {name!r} has {rows} row{'s' if rows != 1 else ''} in split {train_split!r}, too "
        f"few to hold out a test split: `dataset_test_size` {test_size} holds out {held_out} and leaves "
        f"none to train on. To fix it, {fix}."
    )


def _loaded(name: str, load) -> DatasetDict:
    """`load()`'s dataset; what the datasets library cannot read or find (a Hub id offline or unknown, a config it
    does not have, columns whose types conflict between rows) is an error naming the dataset."""
    try:
        return load()
    except (DatasetGenerationError, FileNotFoundError, ConnectionError, ValueError) as error:
        cause = error.__cause__ if isinstance(error, DatasetGenerationError) and error.__cause__ else error
        offline = (
            " The Hub is offline (HF_HUB_OFFLINE=1): give a local file or a dataset in the cache."
            if constants.HF_HUB_OFFLINE and isinstance(error, ConnectionError)
            else ""
        )
        raise RecipeError(f"Cannot load the dataset {name!r}: {type(cause).__name__}: {cause}.{offline}") from None


def _load_checked(
    name: str,
    config: str | None,
    split: str,
    required_columns: tuple[str, ...],
    files: list[str] | None = None,
    hub_options: dict | None = None,
):
    """(dataset, whether it is local): a local file or folder (or the local `files` given), read and checked record by
    record and loaded as `split`, or a Hub dataset (`config`, and `hub_options` for `load_dataset`); it must have
    `split`, with `required_columns`."""
    local = Path(os.path.expanduser(name))
    is_local = files is not None or local.exists()
    if is_local:
        files = (
            [checked for file in files for checked in local_json_files(Path(file))]
            if files is not None
            else local_json_files(local)
        )
        if _check_local_rows(files, required_columns) == 0:
            raise RecipeError(f"The dataset {name!r} holds no records (only blank lines or an empty array).")
        dataset = _loaded(name, lambda: load_dataset("json", data_files={split: files}))
    elif looks_local(name):
        raise RecipeError(
            f"The dataset {name!r} does not exist: there is no such file or folder "
            f"({os.path.abspath(local)}). Give a local .json/.jsonl file or folder, or a Hub dataset id "
            "(`owner/name`)."
        )
    else:
        dataset = _loaded(name, lambda: load_dataset(name, name=config, **(hub_options or {})))
    if split not in dataset:
        raise RecipeError(f"The dataset {name!r} has no split {split!r}; it has {sorted(dataset)}.")
    missing = [c for c in required_columns if c not in dataset[split].column_names]
    if missing:
        raise RecipeError(
            f"The dataset {name!r} lacks the column(s) {missing} this stage needs "
            f"({', '.join(required_columns)}); its columns are {dataset[split].column_names}."
        )
    return dataset, is_local


def _checked_rows(
    dataset: DatasetDict, name: str, splits: tuple[str, ...], required_columns: tuple[str, ...], is_local: bool
) -> None:
    """The given splits (those there are) have rows; a Hub dataset's rows are checked for the stage (local records
    were checked as they were read)."""
    for split in splits:
        if split in dataset and len(dataset[split]) == 0:
            raise RecipeError(f"The dataset {name!r} has no rows in split {split!r}.")
    if not is_local:
        _check_split_rows(dataset, name, splits, required_columns)


def _member_rows(member: mixtures.Member, required_columns: tuple[str, ...]):
    """The rows of a mixture member's split, checked like a `dataset_name`'s (a TRL member's local files as datasets
    would read them)."""
    hub_options = {
        key: value
        for key, value in (("data_dir", member.data_dir), ("data_files", member.data_files))
        if value is not None
    }
    hub_options = {key: list(value) if isinstance(value, tuple) else value for key, value in hub_options.items()}
    dataset, is_local = _load_checked(
        member.id, member.config, member.split, required_columns, trl_datasets.local_files(member), hub_options
    )
    _checked_rows(dataset, member.id, (member.split,), required_columns, is_local)
    return dataset[member.split]


def recipe_mixture(data_args, run_seed: int = 0, required_columns: tuple[str, ...] = ()) -> mixtures.Mixture | None:
    """The mixture the recipe's data arguments write, checked: `dataset_mixture`, or TRL's `datasets` (with its
    `streaming` and `test_split_size`); None when they write none."""
    if data_args.dataset_mixture is not None:
        return mixtures.read_mixture(data_args.dataset_mixture, run_seed, data_args.dataset_test_size, required_columns)
    if data_args.datasets is not None:
        return trl_datasets.read_datasets(
            data_args.datasets,
            data_args.streaming,
            data_args.test_split_size,
            run_seed,
            data_args.dataset_test_size,
            required_columns,
        )
    return None


def mixture_record(mixture: mixtures.Mixture) -> dict:
    """The recipe keys, every default filled in, from which the mixture's splits are rebuilt (goft_run.json)."""
    if mixture.selection == mixtures.FRACTION:
        return trl_datasets.recipe_keys(mixture)
    return {mixtures.KEY: mixture.record()}


def mixture_locations(dataset_mixture, datasets) -> dict[str, str]:
    """{what: location} of every dataset a `dataset_mixture` or TRL's `datasets` names (unchecked)."""
    return {**mixtures.member_locations(dataset_mixture), **trl_datasets.member_locations(datasets)}


SOURCES = "`dataset_name` (one dataset), `dataset_mixture` (alignment-handbook's mixture) and `datasets` (TRL's list)"


def _check_one_source(data_args) -> None:
    """Exactly one of `dataset_name`, `dataset_mixture` and `datasets`; TRL's `test_split_size` and `streaming` only
    with `datasets`, `dataset_config` only with `dataset_name`."""
    given = [
        f"`{key}`"
        for key, value in (
            ("dataset_name", data_args.dataset_name),
            ("dataset_mixture", data_args.dataset_mixture),
            ("datasets", data_args.datasets),
        )
        if value not in (None, "")
    ]
    if len(given) > 1:
        both = f"Both {given[0]} and {given[1]}" if len(given) == 2 else f"{', '.join(given[:-1])} and {given[-1]}"
        raise RecipeError(f"{both} are given; give exactly one of {SOURCES}.")
    if not given:
        raise RecipeError(
            f"The data is missing: give exactly one of {SOURCES}. `dataset_name` is a local "
            ".json/.jsonl file or folder, or a Hub dataset id; the other two mix several (see "
            "--help_all)."
        )
    if data_args.datasets is None and (data_args.test_split_size is not None or data_args.streaming):
        key = "test_split_size" if data_args.test_split_size is not None else "streaming"
        raise RecipeError(
            f"`{key}` goes with TRL's `datasets` list; with {given[0]}, the held-out share is "
            + ("`dataset_mixture.test_split_size`." if given[0] == "`dataset_mixture`" else "`dataset_test_size`.")
        )
    if data_args.dataset_config and data_args.dataset_name in (None, ""):
        own = "`config`" if data_args.dataset_mixture is not None else "`name`"
        raise RecipeError(
            f"`dataset_config` applies to `dataset_name`; with {given[0]}, give each dataset of the "
            f"mixture its own {own}."
        )


def load_recipe_dataset(data_args, required_columns: tuple[str, ...], seed: int) -> DatasetDict:
    """Train and test splits with `required_columns`, from `dataset_name`, `dataset_mixture` or TRL's `datasets`
    (see `mixtures`); a test split is carved out when the data has none. The records of a stage's columns
    (`SFT_COLUMNS`, `DPO_COLUMNS`) are checked one by one first."""
    _check_one_source(data_args)
    mixture = recipe_mixture(data_args, seed, tuple(required_columns))
    if mixture is not None:
        return mixtures.build_mixture(
            mixture,
            lambda member: _member_rows(member, tuple(required_columns)),
            data_args.dataset_train_split,
            data_args.dataset_test_split,
        )
    name = data_args.dataset_name
    train_split, test_split = data_args.dataset_train_split, data_args.dataset_test_split
    dataset, is_local = _load_checked(name, data_args.dataset_config, train_split, required_columns)
    _checked_rows(dataset, name, (train_split, test_split), required_columns, is_local)
    if test_split not in dataset:
        if not 0 < data_args.dataset_test_size < 1:
            raise RecipeError(f"`dataset_test_size` must be in (0, 1), got {data_args.dataset_test_size}.")
        _check_split_sizes(
            name, len(dataset[train_split]), data_args.dataset_test_size, train_split, test_split, is_local
        )
        held_out = dataset[train_split].train_test_split(test_size=data_args.dataset_test_size, seed=seed)
        dataset = DatasetDict({train_split: held_out["train"], test_split: held_out["test"]})
    return dataset


def is_hub_dataset(name: str) -> bool:
    """Whether a dataset name is read from the Hub: no local file or folder, and not a name only a path can have."""
    return not os.path.exists(os.path.expanduser(name)) and not looks_local(name)


def rows_fingerprint(split) -> str:
    """sha256 of a dataset split's rows, in order (each row as sorted-key JSON)."""
    digest = hashlib.sha256()
    for row in split:
        digest.update(json.dumps(row, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
