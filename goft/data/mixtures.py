"""Dataset mixtures: alignment-handbook's `dataset_mixture`, read and checked, and the mixed train and test splits.

    dataset_mixture:
      datasets:
        - id: data/facts.jsonl     # a local .json/.jsonl file or folder, or a Hub dataset id
          config: null             # the Hub dataset's config name
          split: train             # the split whose rows are taken (default: train)
          columns: [messages]      # keep only these columns
          weight: 0.5              # the share of that split's rows taken, in (0, 1] (default: 1)
        - id: data/chat.jsonl
      seed: 42                     # default: the run's seed
      test_split_size: 0.1         # default: dataset_test_size

Each member is checked like `dataset_name` (by the loader `build_mixture` is given), its rows are shuffled with the
seed and the first `floor(weight * rows)` taken; the members' rows are concatenated, shuffled with the seed and split:
`test_split_size` of them are held out. The same spec and seed give the same rows, in the same order.

TRL's own spelling, a top-level `datasets:` list (`trl_datasets`), is read into the same members with the selection
`FRACTION`: TRL's first rows by normalised fraction instead of a seeded share; the rest is the same.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from datasets import Dataset, DatasetDict, concatenate_datasets

from goft.errors import RecipeError

KEY = "dataset_mixture"
MIXTURE_KEYS = ("datasets", "seed", "test_split_size")
MEMBER_KEYS = ("id", "config", "split", "columns", "weight")
TRL_NAMES = {"path": "id", "name": "config", "fraction": "weight"}  # TRL's DatasetConfig spells these so
SEED_LIMIT = 2**32
WEIGHT, FRACTION = "seeded weight", "first rows by normalised fraction"  # how members' rows are selected
EXAMPLE = "`dataset_mixture: {datasets: [{id: data/a.jsonl, weight: 0.5}, {id: data/b.jsonl}]}`"


@dataclass(frozen=True)
class Member:
    """One dataset of a mixture; `index` is its place in the list `key` (`dataset_mixture.datasets`, or TRL's
    `datasets`), from 0. TRL's members may also have a `fraction`, `data_dir` and `data_files` (see `trl_datasets`)."""

    index: int
    id: str
    config: str | None = None
    split: str = "train"
    columns: tuple[str, ...] | None = None
    weight: float = 1.0
    key: str = f"{KEY}.datasets"
    fraction: float | None = None
    data_dir: str | None = None
    data_files: str | tuple[str, ...] | dict | None = None

    @property
    def label(self) -> str:
        return f"`{self.key}[{self.index}]` ({self.id!r})"

    def record(self) -> dict:
        """The member as goft_run.json records it: a local id as an absolute path, every key spelled out."""
        local = os.path.expanduser(self.id)
        return {
            "id": os.path.abspath(local) if os.path.exists(local) else self.id,
            "config": self.config,
            "split": self.split,
            "columns": list(self.columns) if self.columns else None,
            "weight": self.weight,
        }


@dataclass(frozen=True)
class Mixture:
    """A checked mixture, its seed and held-out share filled in; `selection`: `WEIGHT` (alignment-handbook's
    `dataset_mixture`) or `FRACTION` (TRL's `datasets`)."""

    members: tuple[Member, ...]
    seed: int
    test_split_size: float | int
    selection: str = WEIGHT

    @property
    def name(self) -> str:
        """The recipe key the mixture was written as, for messages."""
        return f"`{KEY}`" if self.selection == WEIGHT else "`datasets`"

    @property
    def test_key(self) -> str:
        return f"`{KEY}.test_split_size`" if self.selection == WEIGHT else "`test_split_size`"

    def record(self) -> dict:
        """The mixture with every default filled in, from which the same splits can be rebuilt elsewhere."""
        return {
            "datasets": [member.record() for member in self.members],
            "seed": self.seed,
            "test_split_size": self.test_split_size,
        }


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def refuse_unknown_keys(keys, known: tuple[str, ...], where: str, other_names: dict = TRL_NAMES) -> None:
    """A key not in `known` is refused, with the closest known key (or the one `other_names` maps it to)."""
    unknown = [key for key in keys if key not in known]
    if not unknown:
        return
    key = unknown[0]
    close = other_names.get(key) or next(iter(difflib.get_close_matches(str(key), known, n=1)), None)
    hint = f" (did you mean `{close}`?)" if close else ""
    raise RecipeError(f"{where} has the unknown key {key!r}{hint}; its keys are {', '.join(known)}.")


def held_out_share(given, key: str, default: float) -> float | int:
    """The size of the held-out split: `given` (the value of `key`), else `default` (the run's
    `dataset_test_size`); a share of the rows in (0, 1), or a whole number of rows (at least 1), as datasets'
    `train_test_split` reads them."""
    value = default if given is None else given
    if is_number(value) and 0 < value < 1:
        return float(value)
    if is_number(value) and value >= 1 and float(value).is_integer():
        return int(value)
    named = key if given is not None else "dataset_test_size"
    raise RecipeError(
        f"`{named}` is {value!r}, but it must be the size of the held-out test split: a share of the rows in (0, 1), "
        "or a whole number of rows (at least 1)."
    )


def held_out_rows(size: float | int, rows: int) -> int:
    """How many of `rows` rows a held-out size holds out, as datasets' train_test_split counts them."""
    return size if isinstance(size, int) else math.ceil(size * rows)


def member_split(value: dict, label: str) -> str:
    """A member's `split`: the name of one split, `train` when not given."""
    split = "train" if value.get("split") is None else value["split"]
    if not isinstance(split, str) or not split:
        raise RecipeError(f"{label}: `split` must be the name of a split, e.g. `split: train`, not {split!r}.")
    return split


def member_columns(value, label: str, accepted: tuple[tuple[str, ...], ...] = ()) -> tuple[str, ...] | None:
    """A member's `columns`, which must keep every column of one of the stage's types (`accepted`: their columns)."""
    if value is None:
        return None
    if not (isinstance(value, list) and value and all(isinstance(c, str) and c for c in value)):
        raise RecipeError(
            f"{label}: `columns` must be a non-empty list of column names, e.g. `columns: [messages]`, not {value!r}."
        )
    if accepted and not any(all(column in value for column in columns) for columns in accepted):
        closest = min(accepted, key=lambda columns: sum(column not in value for column in columns))
        left_out = [column for column in closest if column not in value]
        needs = " or ".join("/".join(columns) for columns in accepted)
        raise RecipeError(
            f"{label}: `columns` {value} leaves out the column(s) {left_out} this stage needs ({needs}); add them, "
            "or drop `columns` to keep every column."
        )
    return tuple(dict.fromkeys(value))


def _weight(value, label: str) -> float:
    if value is None:
        return 1.0
    if not is_number(value) or not 0 < value <= 1:
        raise RecipeError(
            f"{label}: `weight` is {value!r}, but it must be a number in (0, 1]: the share of the "
            "dataset's rows taken (1 takes them all; a dataset cannot be taken more than once)."
        )
    return float(value)


def _member(index: int, value, accepted: tuple[tuple[str, ...], ...]) -> Member:
    where = f"`{KEY}.datasets[{index}]`"
    if not isinstance(value, dict):
        raise RecipeError(
            f"{where} is {value!r}, not a mapping with an `id` (and optionally config, split, columns, weight)."
        )
    refuse_unknown_keys(value, MEMBER_KEYS, where)
    name = value.get("id")
    if not isinstance(name, str) or not name.strip():
        raise RecipeError(
            f"{where} has no `id`: give the local .json/.jsonl file or folder, or the Hub dataset id, "
            "whose rows it takes."
        )
    label = f"{where} ({name!r})"
    config = value.get("config")
    if config is not None and not isinstance(config, str):
        raise RecipeError(f"{label}: `config` must be the name of a Hub dataset config, not {config!r}.")
    split = member_split(value, label)
    return Member(
        index=index,
        id=name,
        config=config,
        split=split,
        columns=member_columns(value.get("columns"), label, accepted),
        weight=_weight(value.get("weight"), label),
    )


def read_mixture(
    value, run_seed: int = 0, default_test_size: float = 0.1, accepted: tuple[tuple[str, ...], ...] = ()
) -> Mixture:
    """The mixture a recipe's `dataset_mixture` describes, with `run_seed` and `default_test_size` where it sets no
    `seed` or `test_split_size`; a bad spec is refused with what is wrong and where."""
    if not isinstance(value, dict):
        raise RecipeError(f"`{KEY}` must be a mapping with a `datasets` list, e.g. {EXAMPLE}; got {value!r}.")
    refuse_unknown_keys(value, MIXTURE_KEYS, f"`{KEY}`")
    datasets = value.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise RecipeError(f"`{KEY}.datasets` must be a non-empty list of datasets, e.g. {EXAMPLE}; got {datasets!r}.")
    seed = value.get("seed")
    seed = run_seed if seed is None else seed
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < SEED_LIMIT):
        raise RecipeError(
            f"`{KEY}.seed` is {seed!r}, but it must be a whole number in [0, {SEED_LIMIT}), or left "
            "out to use the run's `seed`."
        )
    test_size = held_out_share(value.get("test_split_size"), f"{KEY}.test_split_size", default_test_size)
    members = tuple(_member(index, item, tuple(accepted)) for index, item in enumerate(datasets))
    return Mixture(members=members, seed=seed, test_split_size=test_size)


def member_locations(value) -> dict[str, str]:
    """{what: id} for every member `id` a `dataset_mixture` value names (unchecked: read what is there), so that an
    output folder overlapping a member's local data is refused."""
    datasets = value.get("datasets") if isinstance(value, dict) else None
    members = datasets if isinstance(datasets, list) else []
    return {
        f"dataset of `{KEY}.datasets[{index}]`": member["id"]
        for index, member in enumerate(members)
        if isinstance(member, dict) and isinstance(member.get("id"), str)
    }


def _taken(rows: Dataset, member: Member, seed: int) -> Dataset:
    """`member.weight` of the rows, chosen by a shuffle with `seed`."""
    count = math.floor(member.weight * len(rows) + 1e-9)  # 0.29 * 100 is 28.999…: count it as 29
    if count == 0:
        raise RecipeError(
            f"{member.label}: `weight` {member.weight} of its {len(rows)} row(s) in split "
            f"{member.split!r} takes none; raise the weight or add rows."
        )
    return rows if count == len(rows) else rows.shuffle(seed=seed).select(range(count))


def _first_rows_by_fraction(parts: list[Dataset], members: tuple[Member, ...]) -> list[Dataset]:
    """TRL's selection: the fractions, normalised to sum to one, are each member's share of the mixture, whose size
    `total` is the largest that takes no member's row twice; each member gives its first `round(share * total)` rows.
    Without fractions every row is taken."""
    fractions = [member.fraction for member in members]
    if fractions[0] is None:
        return parts
    shares = [fraction / sum(fractions) for fraction in fractions]
    total = min(len(part) / share for part, share in zip(parts, shares))
    taken = []
    for part, share, member in zip(parts, shares, members):
        count = min(round(share * total), len(part))
        if count == 0:
            raise RecipeError(
                f"{member.label}: `fraction` {member.fraction} of a mixture of {total:g} row(s) takes "
                "none of its rows; raise its fraction or add rows to the other datasets."
            )
        taken.append(part.select(range(count)))
    return taken


def _check_same_columns(parts: list[Dataset], mixture: Mixture) -> None:
    layouts = {frozenset(part.column_names) for part in parts}
    if len(layouts) == 1:
        return
    listed = "; ".join(f"{member.label}: {part.column_names}" for member, part in zip(mixture.members, parts))
    raise RecipeError(
        f"The {mixture.name} members have different columns ({listed}). Mixed rows need the same "
        "columns: give each member `columns: [...]` with the ones the stage trains on."
    )


def _concatenated(parts: list[Dataset], mixture: Mixture) -> Dataset:
    try:
        return concatenate_datasets(parts)
    except ValueError:
        listed = "; ".join(f"{member.label}: {part.features}" for member, part in zip(mixture.members, parts))
        raise RecipeError(
            f"The {mixture.name} members' columns hold values of different types, which cannot be mixed "
            f"({listed}). Give every member's records the same shape (the same keys in each "
            "message, for instance)."
        ) from None


def _check_split_sizes(rows: int, mixture: Mixture) -> None:
    test_size = mixture.test_split_size
    held_out = held_out_rows(test_size, rows)
    if held_out >= rows:
        shares = "the weights" if mixture.selection == WEIGHT else "the datasets"
        raise RecipeError(
            f"The {mixture.name} mixture has {rows} row(s), too few to hold out a test split of "
            f"{test_size}: it would hold out {held_out} and leave none to train on. Lower "
            f"{mixture.test_key} (or `dataset_test_size`), raise {shares}, or add rows."
        )


def build_mixture(
    mixture: Mixture, load_member: Callable[[Member], Dataset], train_split: str, test_split: str
) -> DatasetDict:
    """The mixed `train_split` and held-out `test_split`. `load_member(member)` gives the rows of the member's split,
    checked, its `columns` kept (a `RecipeError` it raises is named with the member); the selection (each member's
    `weight`, or TRL's fractions) is applied here."""
    parts = []
    for member in mixture.members:
        try:
            rows = load_member(member)
        except RecipeError as error:
            raise RecipeError(f"{member.label}: {error}") from None
        parts.append(_taken(rows, member, mixture.seed) if mixture.selection == WEIGHT else rows)
    if mixture.selection == FRACTION:
        parts = _first_rows_by_fraction(parts, mixture.members)
    _check_same_columns(parts, mixture)
    mixed = _concatenated(parts, mixture)
    _check_split_sizes(len(mixed), mixture)
    held_out = mixed.train_test_split(test_size=mixture.test_split_size, shuffle=True, seed=mixture.seed)  # interleaves
    return DatasetDict({train_split: held_out["train"], test_split: held_out["test"]})
