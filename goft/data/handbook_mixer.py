"""alignment-handbook's older data keys, with its meaning:

    dataset_mixer:                 # {local path or Hub id: the share of its training rows taken, in (0, 1]}
      HuggingFaceH4/ultrachat_200k: 1.0
      data/facts: 0.5
    dataset_splits: [train_sft, test_sft]   # default [train, test]
    dataset_configs: [default, null]        # optional, one per dataset

Each split whose name contains "train" gives its first `int(fraction * rows)` rows (no shuffle) to the training rows,
each containing "test" gives all its rows to the held-out ones; both are concatenated and shuffled with the
handbook's fixed seed, 42. Without a test split, one is carved out of the training rows with `dataset_test_size`.
`dataset_splits` alone, beside `dataset_name`, names the dataset's training split and held-out split the same way.
"""

from collections.abc import Callable

from datasets import Dataset, DatasetDict, concatenate_datasets

from goft.data.mixtures import is_number
from goft.errors import RecipeError

KEY = "dataset_mixer"
HANDBOOK_SEED = 42
EXAMPLE = "`dataset_mixer: {data/facts.jsonl: 0.5, owner/chats: 1.0}`"


def split_roles(splits, key: str = "dataset_splits") -> tuple[list[str], list[str]]:
    """(training splits, held-out splits) of a `dataset_splits` list: a name containing "train", or "test"."""
    if not (isinstance(splits, list) and splits and all(isinstance(s, str) and s for s in splits)):
        raise RecipeError(
            f"`{key}` must be a non-empty list of split names, e.g. [train_sft, test_sft]; got {splits!r}."
        )
    trains = [split for split in splits if "train" in split]
    tests = [split for split in splits if "test" in split and "train" not in split]
    other = [split for split in splits if split not in trains + tests]
    if other:
        raise RecipeError(
            f"`{key}` names {other[0]!r}, which is neither a training split (its name contains 'train') nor a "
            "held-out one (its name contains 'test')."
        )
    return trains, tests


def named_splits(splits) -> tuple[str, str | None]:
    """(training split, held-out split or None) that `dataset_splits` names for `dataset_name`."""
    trains, tests = split_roles(splits)
    if len(trains) != 1 or len(tests) > 1:
        many = f"{len(trains)} training splits" if len(trains) != 1 else f"{len(tests)} held-out splits"
        raise RecipeError(
            f"`dataset_splits` {splits} names {many}; with `dataset_name` give one split whose name contains "
            "'train' and at most one containing 'test'."
        )
    return trains[0], tests[0] if tests else None


def read_mixer(mixer, splits, configs) -> list[tuple[str, float, str | None]]:
    """[(dataset, fraction, config)] of a `dataset_mixer`, checked with its `dataset_splits` and `dataset_configs`."""
    if not (isinstance(mixer, dict) and mixer):
        raise RecipeError(f"`{KEY}` must be a mapping of datasets to fractions, e.g. {EXAMPLE}; got {mixer!r}.")
    for name, fraction in mixer.items():
        if not (isinstance(name, str) and name.strip()):
            raise RecipeError(f"`{KEY}` names the dataset {name!r}; give a local path or a Hub dataset id.")
        if not (is_number(fraction) and 0 < fraction <= 1):
            raise RecipeError(
                f"`{KEY}` gives {name!r} the fraction {fraction!r}; it must be in (0, 1]: the share of its "
                "training rows taken (its first rows)."
            )
    trains, _ = split_roles(["train", "test"] if splits is None else splits)
    if not trains:
        raise RecipeError(f"`dataset_splits` {splits} names no training split (a name containing 'train').")
    configs = [None] * len(mixer) if configs is None else configs
    if not (isinstance(configs, list) and len(configs) == len(mixer)):
        raise RecipeError(
            f"`dataset_configs` must list one config per dataset of `{KEY}` ({len(mixer)}), in its order; "
            f"got {configs!r}."
        )
    return [(name, float(fraction), config) for (name, fraction), config in zip(mixer.items(), configs)]


def build_mixer(
    members, splits, load: Callable[[str, str | None, str], Dataset], train_split: str, test_split: str, carve
) -> DatasetDict:
    """The mixed training and held-out splits; `load(dataset, config, split)` gives a split's rows, checked and
    normalised; `carve(rows)` holds out a test split when `splits` names none."""
    trains, tests = split_roles(["train", "test"] if splits is None else splits)
    train_parts, test_parts = [], []
    for name, fraction, config in members:
        for split in trains:
            rows = load(name, config, split)
            count = int(fraction * len(rows))
            if count == 0:
                raise RecipeError(f"`{KEY}`: the fraction {fraction} of {name!r}'s {len(rows)} rows takes none.")
            train_parts.append(rows.select(range(count)))
        test_parts += [load(name, config, split) for split in tests]
    train = _mixed(train_parts)
    return carve(train) if not test_parts else DatasetDict({train_split: train, test_split: _mixed(test_parts)})


def _mixed(parts: list[Dataset]) -> Dataset:
    """The parts concatenated and shuffled with the handbook's seed."""
    try:
        return concatenate_datasets(parts).shuffle(seed=HANDBOOK_SEED)
    except ValueError:
        features = "; ".join(str(part.features) for part in parts)
        raise RecipeError(
            f"The `{KEY}` datasets' columns hold values of different types, which cannot be mixed ({features}); give "
            "every dataset's rows the same shape (the same keys in each message, for instance)."
        ) from None
