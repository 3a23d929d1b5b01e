"""Recipe datasets: local files and folders as users keep them (`layouts`), Hub ids, or a mixture of them (`mixtures`,
`trl_datasets`, `handbook_mixer`); every row checked (JSON records for their encoding and JSON too, with file and
line) for a type the stage reads and each split normalised (`dataset_types`), before any model is loaded; a test
split carved out when the data has none."""

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from datasets import DatasetDict, load_dataset
from datasets.exceptions import DatasetGenerationError
from huggingface_hub import constants

from goft.data import dataset_types, handbook_mixer, layouts, mixtures, trl_datasets
from goft.data.json_files import json_rows
from goft.data.stages import RecipeStage
from goft.errors import RecipeError
from goft.io.paths import looks_like_local_path

DATA_SUFFIXES = (*layouts.BUILDERS, ".tsv", ".txt", ".arrow")
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")  # `name` or `owner/name`


def looks_local(name: str) -> bool:
    """Whether a dataset name can only mean a local path: ./ ../ ~ or absolute, a data file's suffix, a backslash,
    or a name that is no Hub id (`name` or `owner/name`)."""
    if looks_like_local_path(name) or os.path.isabs(name) or "\\" in name:
        return True
    return name.lower().endswith(DATA_SUFFIXES) or ".." in name or not HUB_ID.fullmatch(name)


def _largest_test_size(rows: int) -> float | None:
    """The largest `dataset_test_size`, in hundredths, that leaves a row to train on; None below 2 rows."""
    fits = [hundredths / 100 for hundredths in range(1, 100) if math.ceil(hundredths / 100 * rows) < rows]
    return fits[-1] if fits else None


def _check_split_sizes(name: str, rows: int, test_size, train_split: str, test_split: str, local: bool) -> None:
    """A test split carved out of `rows` rows must leave at least one to train on."""
    held_out = mixtures.held_out_rows(test_size, rows)
    if held_out < rows:
        return
    largest = _largest_test_size(rows)
    fix = (
        f"use a `dataset_test_size` of at most {largest} (or {rows - 1} rows), or add rows"
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
        text = " ".join(str(cause).split())  # one line
        raise RecipeError(f"Cannot load the dataset {name!r}: {type(cause).__name__}: {text}.{offline}") from None


@dataclass(frozen=True)
class Rows:
    """How a dataset's rows are read: checked and normalised for `stage` (None: read as they are), the text column
    `text_field`, and a mixture member's `columns` kept."""

    stage: RecipeStage | None
    text_field: str = "text"
    columns: tuple[str, ...] | None = None

    def kept(self, record):
        return (
            {k: record[k] for k in self.columns if k in record} if self.columns and isinstance(record, dict) else record
        )

    def check_json(self, files: list[str]) -> int:
        """Read every record of local JSON files (encoding, JSON, objects), check its shape; how many there are."""
        check = dataset_types.row_check(self.stage, self.text_field) if self.stage else None
        count = 0
        for file in files:
            if os.path.getsize(file) == 0:
                raise RecipeError(f"The dataset file {file!r} is empty.")
            for where, record in json_rows(file):
                count += 1
                if check:
                    check.add(self.kept(record), where)
        if check:
            check.raise_if_bad()
        return count

    def finish(self, rows, name: str, split: str, checked: bool):
        """A loaded split with rows, its `columns` kept, checked (unless `checked` already) and normalised."""
        if len(rows) == 0:
            raise RecipeError(f"The dataset {name!r} has no rows in split {split!r}.")
        if self.columns:
            missing = [column for column in self.columns if column not in rows.column_names]
            if missing:
                raise RecipeError(
                    f"`columns` names {missing}, which the dataset does not have; its columns are {rows.column_names}."
                )
            rows = rows.select_columns(list(self.columns))
        if self.stage is None:
            return rows
        if not checked:
            dataset_types.check_split(rows, self.stage, self.text_field, f"The dataset {name!r}, split {split!r}")
        return dataset_types.normalise(rows, self.stage, self.text_field)


def _read(name: str, config, wanted: tuple[str, ...], rows: Rows, files=None, hub_options=None) -> DatasetDict:
    """The `wanted` splits there are (the first must be) of a local file or folder (see `layouts`; or the local
    `files` given), or of a Hub dataset (`config`, and `hub_options` for `load_dataset`): checked row by row, JSON
    records as they are read, and normalised. Splits not wanted are never read."""
    local = Path(os.path.expanduser(name))
    splits, checked = None, False
    if files is not None:
        splits = {wanted[0]: files}
    elif layouts.is_saved(local):
        dataset = _loaded(name, lambda: layouts.load_saved(local))
    elif local.exists():
        splits = layouts.split_files(local, wanted[0], config)
    elif looks_local(name):
        raise RecipeError(
            f"The dataset {name!r} does not exist: there is no such file or folder ({os.path.abspath(local)}). Give "
            f"a local {layouts.known_formats()} file or folder, a `save_to_disk` folder, or a Hub dataset id "
            "(`owner/name`)."
        )
    else:
        dataset = _loaded(name, lambda: load_dataset(name, name=config, **(hub_options or {})))
    if splits is not None:
        if wanted[0] not in splits:
            raise RecipeError(f"The dataset {name!r} has no split {wanted[0]!r}; it has {sorted(splits)}.")
        splits = {split: splits[split] for split in wanted if split in splits}
        builder = layouts.builder_of([f for fs in splits.values() for f in fs], f"The dataset {name!r}")
        if builder == "json":
            for split_files in splits.values():
                if rows.check_json(split_files) == 0:
                    raise RecipeError(f"The dataset {name!r} holds no records (only blank lines or an empty array).")
            checked = True
        dataset = DatasetDict({split: _loaded(name, partial(_load_split, builder, split, splits)) for split in splits})
    if wanted[0] not in dataset:
        raise RecipeError(f"The dataset {name!r} has no split {wanted[0]!r}; it has {sorted(dataset)}.")
    return DatasetDict({s: rows.finish(dataset[s], name, s, checked) for s in wanted if s in dataset})


def _load_split(builder: str, split: str, splits: dict):
    """One split of local files, loaded alone: each split has its own columns, checked by `Rows`."""
    return load_dataset(builder, data_files={split: splits[split]})[split]


def _carve(name: str, train, splits: tuple[str, str], size, seed: int, local: bool) -> DatasetDict:
    """A test split held out of the training rows (`size`: a share or a count of rows, as `dataset_test_size`)."""
    size = mixtures.held_out_share(size, "dataset_test_size", 0.1)
    _check_split_sizes(name, len(train), size, *splits, local)
    held_out = train.train_test_split(test_size=size, seed=seed)
    return DatasetDict({splits[0]: held_out["train"], splits[1]: held_out["test"]})


def _member_rows(member: mixtures.Member, rows: Rows, forms: dict):
    """The rows of a mixture member's split, read like a `dataset_name`'s (a TRL member's local files as datasets
    would read them), its `columns` kept; its normalised form must be the other members'."""
    hub_options = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in (("data_dir", member.data_dir), ("data_files", member.data_files))
        if value is not None
    }
    rows = Rows(rows.stage, rows.text_field, member.columns)
    split = _read(member.id, member.config, (member.split,), rows, trl_datasets.local_files(member), hub_options)
    return _same_form(split[member.split], member.label, rows, forms)


def _same_form(split, label: str, rows: Rows, forms: dict):
    if rows.stage is not None:
        forms[label] = dataset_types.row_form(rows.stage, split[0], rows.text_field, normalised=True)
        dataset_types.check_same_form(forms, "mixture")
    return split


def recipe_mixture(data_args, run_seed: int = 0, accepted: tuple[tuple[str, ...], ...] = ()) -> mixtures.Mixture | None:
    """The mixture the recipe's data arguments write, checked: `dataset_mixture`, or TRL's `datasets` (with its
    `streaming` and `test_split_size`); None when they write none (`dataset_mixer` is `handbook_mixer`'s)."""
    if data_args.dataset_mixture is not None:
        return mixtures.read_mixture(data_args.dataset_mixture, run_seed, data_args.dataset_test_size, accepted)
    if data_args.datasets is not None:
        return trl_datasets.read_datasets(
            data_args.datasets,
            data_args.streaming,
            data_args.test_split_size,
            run_seed,
            data_args.dataset_test_size,
            accepted,
        )
    return None


def source_record(data_args) -> dict:
    """The handbook's keys a run's data was made with (`dataset_splits`, `dataset_mixer` with local paths absolute,
    `dataset_configs`), for goft_run.json; {} when none is given."""
    mixer = data_args.dataset_mixer
    if isinstance(mixer, dict):
        mixer = {
            os.path.abspath(os.path.expanduser(k)) if os.path.exists(os.path.expanduser(k)) else k: v
            for k, v in mixer.items()
        }
    keys = {
        "dataset_splits": data_args.dataset_splits,
        handbook_mixer.KEY: mixer,
        "dataset_configs": data_args.dataset_configs,
    }
    return {key: value for key, value in keys.items() if value is not None}


def mixture_record(mixture: mixtures.Mixture) -> dict:
    """The recipe keys, every default filled in, from which the mixture's splits are rebuilt (goft_run.json)."""
    if mixture.selection == mixtures.FRACTION:
        return trl_datasets.recipe_keys(mixture)
    return {mixtures.KEY: mixture.record()}


def mixture_locations(dataset_mixture, datasets, dataset_mixer=None) -> dict[str, str]:
    """{what: location} of every dataset a `dataset_mixture`, TRL's `datasets` or a `dataset_mixer` names
    (unchecked)."""
    mixer = dataset_mixer if isinstance(dataset_mixer, dict) else {}
    return {
        **mixtures.member_locations(dataset_mixture),
        **trl_datasets.member_locations(datasets),
        **{f"dataset of `dataset_mixer` ({name!r})": name for name in mixer if isinstance(name, str)},
    }


SOURCES = (
    "`dataset_name` (one dataset), `dataset_mixture` (alignment-handbook's mixture), `dataset_mixer` (its older "
    "one) and `datasets` (TRL's list)"
)


def _check_one_source(data_args) -> None:
    """Exactly one of `dataset_name`, `dataset_mixture` and `datasets`; TRL's `test_split_size` and `streaming` only
    with `datasets`, `dataset_config` only with `dataset_name`."""
    given = [
        f"`{key}`"
        for key, value in (
            ("dataset_name", data_args.dataset_name),
            ("dataset_mixture", data_args.dataset_mixture),
            (handbook_mixer.KEY, data_args.dataset_mixer),
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
    if (
        data_args.dataset_splits is not None
        and data_args.dataset_name in (None, "")
        and data_args.dataset_mixer is None
    ):
        raise RecipeError(f"`dataset_splits` goes with `dataset_name` or `dataset_mixer`, not with {given[0]}.")
    if data_args.dataset_configs is not None and data_args.dataset_mixer is None:
        raise RecipeError("`dataset_configs` goes with `dataset_mixer` (one config per dataset).")
    if data_args.dataset_config and data_args.dataset_name in (None, ""):
        own = "`config`" if data_args.dataset_mixture is not None else "`name`"
        raise RecipeError(
            f"`dataset_config` applies to `dataset_name`; with {given[0]}, give each dataset of the "
            f"mixture its own {own}."
        )


def load_recipe_dataset(data_args, stage: RecipeStage | None, seed: int, text_field: str = "text") -> DatasetDict:
    """The recipe's train and test splits (named `dataset_train_split`, `dataset_test_split`), from `dataset_name`,
    `dataset_mixture`, `dataset_mixer` or TRL's `datasets`; a test split is carved out when the data has none. For a
    `stage`, every row is checked first (its type one the stage reads, `text_field` the text column) and each split
    normalised (see `dataset_types`); with None, rows are read as they are."""
    _check_one_source(data_args)
    rows, forms = Rows(stage, text_field or "text"), {}
    splits = (data_args.dataset_train_split, data_args.dataset_test_split)
    mixture = recipe_mixture(data_args, seed, dataset_types.accepted_columns(stage, rows.text_field))
    if mixture is not None:
        dataset = mixtures.build_mixture(mixture, lambda member: _member_rows(member, rows, forms), *splits)
    elif data_args.dataset_mixer is not None:
        members = handbook_mixer.read_mixer(
            data_args.dataset_mixer, data_args.dataset_splits, data_args.dataset_configs
        )

        def load(name, config, split):
            return _same_form(_read(name, config, (split,), rows)[split], repr(name), rows, forms)

        carve = lambda train: _carve(handbook_mixer.KEY, train, splits, data_args.dataset_test_size, seed, True)  # noqa: E731
        dataset = handbook_mixer.build_mixer(members, data_args.dataset_splits, load, *splits, carve)
    else:
        name = data_args.dataset_name
        source = splits
        if data_args.dataset_splits is not None:
            source = handbook_mixer.named_splits(data_args.dataset_splits)
        read = _read(name, data_args.dataset_config, tuple(s for s in source if s), rows)
        train = read[source[0]]
        if source[1] in read:
            dataset = DatasetDict({splits[0]: train, splits[1]: read[source[1]]})
        else:
            dataset = _carve(name, train, splits, data_args.dataset_test_size, seed, not is_hub_dataset(name))
    if stage is not None:  # the held-out rows are read like the training rows
        forms = {f"split {s!r}": dataset_types.row_form(stage, dataset[s][0], rows.text_field, True) for s in splits}
        dataset_types.check_same_form(forms, "data")
    dataset_types.check_task_samples(data_args, dataset[splits[0]], stage, rows.text_field)
    return dataset


def is_hub_dataset(name: str) -> bool:
    """Whether a dataset name is read from the Hub: no local file or folder, not a name only a path can have, and not
    one of datasets' file readers (`json`, `csv`, `parquet`: TRL's `path` for local `data_files`)."""
    local = os.path.exists(os.path.expanduser(name)) or looks_local(name)
    return not local and name not in layouts.BUILDERS.values()


def rows_fingerprint(split) -> str:
    """sha256 of a dataset split's rows, in order (each row as sorted-key JSON)."""
    digest = hashlib.sha256()
    for row in split:
        digest.update(json.dumps(row, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
