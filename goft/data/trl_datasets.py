"""TRL's own way of writing a mixture (`trl.scripts.utils.DatasetMixtureConfig`): top-level recipe keys

    datasets:
      - path: json                   # datasets' JSON reader, with local `data_files` (a file, a list, or {split: ...})
        data_files: data/facts.jsonl
        fraction: 0.7                # the dataset's share of the mixture (all members or none)
      - path: data/chats             # a local folder (and `data_dir` below it), or a Hub dataset id
        name: null                   # the Hub dataset's config name
        split: train
        columns: [messages]
        fraction: 0.3
    test_split_size: 0.1             # default: dataset_test_size
    streaming: false                 # refused when true: goft checks every record before training

read into `mixtures`' members, and mixed by the same machinery with TRL's selection (`mixtures.FRACTION`): the
fractions are normalised to sum to one, the mixture is as large as it can be without taking a row twice, and each
dataset gives its first `round(share * size)` rows (no shuffle); without fractions every row is taken. Then goft holds
out `test_split_size` of the rows (a share, or a count of rows), shuffled with the run's seed. Local data is read as
datasets (and so TRL) reads it: `path: json` (or `csv`, `parquet`) with `data_files`, a folder `path` (plus
`data_dir`) whose files datasets sorts into splits by their names, or a folder written by `save_to_disk`.
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets.data_files import DataFilesDict, get_data_patterns
from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

from goft.data.layouts import BUILDERS, builder_of, is_saved, known_formats
from goft.data.mixtures import (
    FRACTION,
    Member,
    Mixture,
    held_out_share,
    is_number,
    member_columns,
    member_split,
    refuse_unknown_keys,
)
from goft.errors import RecipeError

KEY = "datasets"
MEMBER_KEYS = ("path", "name", "data_dir", "data_files", "split", "columns", "fraction")
GOFT_NAMES = {"id": "path", "config": "name", "weight": "fraction"}  # alignment-handbook's spelling of these
JSON_BUILDER = "json"
FILE_BUILDERS = tuple(dict.fromkeys(BUILDERS.values()))  # `path: json` (or csv, parquet) with local `data_files`
GLOB_CHARACTERS = "*?["
EXAMPLE = "`datasets: [{path: json, data_files: data/a.jsonl, fraction: 0.7}, {path: data/b, fraction: 0.3}]`"


def _optional_text(value, label: str, key: str, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise RecipeError(f"{label}: `{key}` must be {what}, not {value!r}.")
    return value


def _file_list(value) -> tuple[str, ...] | None:
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return tuple(value)
    return None


def _data_files(value, label: str):
    """`data_files` as datasets takes it: a file, a list of files, or {split: file or files}."""
    if value is None:
        return None
    if isinstance(value, dict) and value and all(isinstance(k, str) and _file_list(v) for k, v in value.items()):
        return {split: _file_list(files) for split, files in value.items()}
    files = _file_list(value)
    if files is None:
        raise RecipeError(
            f"{label}: `data_files` must be a file, a list of files or a mapping of split names to "
            f"files, e.g. `data_files: data/a.jsonl`; not {value!r}."
        )
    return files


def _fraction(value, label: str) -> float | None:
    if value is not None and not (is_number(value) and value > 0):
        raise RecipeError(
            f"{label}: `fraction` is {value!r}, but it must be a number above 0: the dataset's share of "
            "the mixture, normalised with the others' (leave the dataset out rather than give it 0)."
        )
    return None if value is None else float(value)


def _member(index: int, value, accepted: tuple[tuple[str, ...], ...]) -> Member:
    where = f"`{KEY}[{index}]`"
    if not isinstance(value, dict):
        raise RecipeError(
            f"{where} is {value!r}, not a mapping with a `path` (and optionally name, data_dir, "
            "data_files, split, columns, fraction)."
        )
    refuse_unknown_keys(value, MEMBER_KEYS, where, GOFT_NAMES)
    path = value.get("path")
    if not isinstance(path, str) or not path.strip():
        raise RecipeError(
            f"{where} has no `path`: give `json` (with local `data_files`), a local folder, or a Hub dataset id."
        )
    label = f"{where} ({path!r})"
    split = member_split(value, label)
    return Member(
        index=index,
        id=path,
        key=KEY,
        split=split,
        config=_optional_text(value.get("name"), label, "name", "the name of a Hub dataset config"),
        data_dir=_optional_text(value.get("data_dir"), label, "data_dir", "a folder name"),
        data_files=_data_files(value.get("data_files"), label),
        columns=member_columns(value.get("columns"), label, accepted),
        fraction=_fraction(value.get("fraction"), label),
    )


def read_datasets(
    value,
    streaming=False,
    test_split_size=None,
    run_seed: int = 0,
    default_test_size: float = 0.1,
    accepted: tuple[tuple[str, ...], ...] = (),
) -> Mixture:
    """The mixture a recipe's TRL-style `datasets`, `streaming` and `test_split_size` describe; held out with
    `run_seed`, `default_test_size` where `test_split_size` is not given. A bad spec is refused with where it is."""
    if streaming:
        raise RecipeError(
            "`streaming: true` is not supported: goft reads and checks every record of every dataset "
            "before training, which a stream does not allow. Drop `streaming`."
        )
    if not isinstance(value, list) or not value:
        raise RecipeError(f"`{KEY}` must be a non-empty list of datasets, e.g. {EXAMPLE}; got {value!r}.")
    test_size = held_out_share(test_split_size, "test_split_size", default_test_size)
    members = tuple(_member(index, item, tuple(accepted)) for index, item in enumerate(value))
    given = [member.fraction is not None for member in members]
    if any(given) and not all(given):
        missing = ", ".join(f"`{KEY}[{m.index}]`" for m in members if m.fraction is None)
        raise RecipeError(f"`fraction` must be set for every dataset of `{KEY}` or for none ({missing} has none).")
    return Mixture(members=members, seed=run_seed, test_split_size=test_size, selection=FRACTION)


def _absolute(member: Member):
    """The member's `data_files` with local paths absolute, so that the record reads the same files anywhere."""
    if member.id not in FILE_BUILDERS or member.data_files is None:
        return member.data_files if not isinstance(member.data_files, tuple) else list(member.data_files)
    if isinstance(member.data_files, dict):
        return {
            split: [os.path.abspath(os.path.expanduser(f)) for f in files] for split, files in member.data_files.items()
        }
    return [os.path.abspath(os.path.expanduser(f)) for f in member.data_files]


def recipe_keys(mixture: Mixture) -> dict:
    """The recipe keys (TRL's spelling, every default filled in, local paths absolute) from which the same splits
    are rebuilt elsewhere, with the run's seed."""
    members = []
    for member in mixture.members:
        local = os.path.expanduser(member.id)
        members.append(
            {
                "path": os.path.abspath(local) if os.path.exists(local) else member.id,
                "name": member.config,
                "data_dir": member.data_dir,
                "data_files": _absolute(member),
                "split": member.split,
                "columns": list(member.columns) if member.columns else None,
                "fraction": member.fraction,
            }
        )
    return {KEY: members, "test_split_size": mixture.test_split_size}


def member_locations(value) -> dict[str, str]:
    """{what: location} for every local location a `datasets` value names (unchecked: read what is there), so that
    an output folder overlapping a member's data is refused."""
    found = {}
    for index, member in enumerate(value if isinstance(value, list) else []):
        if not isinstance(member, dict) or not isinstance(member.get("path"), str):
            continue
        what = f"dataset of `{KEY}[{index}]`"
        if member["path"] not in FILE_BUILDERS:
            found[what] = member["path"]
        files = member.get("data_files")
        files = (
            [f for v in files.values() for f in (v if isinstance(v, list) else [v])]
            if isinstance(files, dict)
            else files
            if isinstance(files, list)
            else [files]
        )
        for number, file in enumerate(f for f in files if isinstance(f, str)):
            found[f"{what}, data file {number}"] = file
    return found


def _checked_files(files, where: str, builder: str | None = None) -> list[str]:
    """The files, all of one format that datasets reads (`builder`'s, when given)."""
    found = builder_of(list(files), where)
    if builder is not None and found != builder:
        raise RecipeError(f"{where} holds {found} files, which `path: {builder}` does not read: write `path: {found}`.")
    return list(files)


def _json_data_files(member: Member) -> list[str]:
    if member.data_files is None or member.data_dir is not None:
        raise RecipeError(
            f"`path: {member.id}` reads the local files of `data_files` (and no `data_dir`): e.g. "
            "`data_files: data/a.jsonl`, or `data_files: [data/a.jsonl, data/b.jsonl]`."
        )
    files = member.data_files
    if isinstance(files, dict):
        if member.split not in files:
            raise RecipeError(f"`data_files` has no split {member.split!r}; it has {sorted(files)}.")
        files = files[member.split]
    elif member.split != "train":
        raise RecipeError(
            f"datasets reads a list of `data_files` as the split 'train', not {member.split!r}: drop "
            "`split`, or give `data_files` as {split: files}."
        )
    for file in files:
        if any(character in file for character in GLOB_CHARACTERS):
            raise RecipeError(f"`data_files` {file!r} is a pattern; goft takes the files by name: list them.")
        if not os.path.isfile(os.path.expanduser(file)):
            raise RecipeError(f"The data file {file!r} does not exist ({os.path.abspath(file)}).")
    return _checked_files([os.path.expanduser(file) for file in files], "`data_files`", member.id)


def _folder_files(member: Member, folder: str) -> list[str]:
    """The files datasets reads as the member's split of a local folder (it sorts them into splits by name)."""
    if member.data_files is not None:
        raise RecipeError(
            "with a local folder as `path`, give no `data_files`; to name the files, write `path: json` "
            "and `data_files: [...]`."
        )
    base = os.path.join(folder, member.data_dir) if member.data_dir else folder
    if not os.path.isdir(base):
        raise RecipeError(f"`data_dir` {member.data_dir!r} is no folder in {folder!r}.")
    try:
        splits = DataFilesDict.from_local_or_remote(get_data_patterns(base), base_path=base)
    except FileNotFoundError:
        raise RecipeError(f"The folder {base!r} holds no data files.") from None
    if member.split not in splits:
        raise RecipeError(
            f"datasets reads the folder {base!r} as the split(s) {sorted(map(str, splits))} (by its "
            f"file names), not {member.split!r}."
        )
    return _checked_files(splits[member.split], f"The folder {base!r}")


def local_files(member: Member) -> list[str] | None:
    """The local files a TRL member's split is read from, as datasets would read them; None for a Hub member (or a
    member of `dataset_mixture`), whose loading is `data`'s."""
    if member.key != KEY:
        return None
    local = os.path.expanduser(member.id)
    if member.id in FILE_BUILDERS:
        return _json_data_files(member)
    if is_saved(Path(local)) and member.data_dir is None and member.data_files is None:
        return None  # read like a `dataset_name` folder written by `save_to_disk`
    if os.path.isdir(local):
        return _folder_files(member, local)
    if os.path.exists(local):
        raise RecipeError(
            f"datasets (and so TRL) reads `path` as a folder or a Hub dataset id, not a file: write "
            f"`path: json` and `data_files: {member.id}`."
        )
    if member.id in _PACKAGED_DATASETS_MODULES:
        raise RecipeError(
            f"`path: {member.id}` reads {member.id} files; goft reads local {known_formats()} files "
            f"(`path: {'`, `path: '.join(FILE_BUILDERS)}` with `data_files`)."
        )
    return None
