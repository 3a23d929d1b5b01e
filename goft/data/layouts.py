"""Local data as users keep it, split as `load_dataset` splits it: a data file (.json, .jsonl, .csv, .parquet; its
rows are the one split asked for), a folder of them whose file names give the splits as datasets reads them
(`train.jsonl` and `test.jsonl`; the Hub's `data/train_sft-00000-of-00001.parquet`; a folder of files none named for
a split is all `train`), a folder whose README declares its configs and their splits' files, as the Hub's dataset
cards do (the recipe's `config` picks one), or a folder written by `save_to_disk` (a DatasetDict, or one Dataset: its
split `train`)."""

from pathlib import Path

from datasets import Dataset, DatasetDict, load_from_disk
from datasets.data_files import DataFilesDict, get_data_patterns, sanitize_patterns
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard

from goft.errors import RecipeError

BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}  # datasets' readers by suffix
SAVED_MARKERS = (("dataset_dict.json",), ("dataset_info.json", "state.json"))  # what `save_to_disk` writes


def is_saved(path: Path) -> bool:
    """Whether `path` is a folder written by `save_to_disk`."""
    return path.is_dir() and any(all((path / name).is_file() for name in names) for names in SAVED_MARKERS)


def load_saved(path: Path) -> DatasetDict:
    """A `save_to_disk` folder's splits; a single Dataset is the split `train`."""
    saved = load_from_disk(str(path))
    return DatasetDict({"train": saved}) if isinstance(saved, Dataset) else saved


def builder_of(files: list[str], where: str) -> str:
    """The datasets reader of `files`, which must all have one known format."""
    builders = {BUILDERS.get(Path(file).suffix.lower()) for file in files}
    if None in builders:
        odd = next(file for file in files if Path(file).suffix.lower() not in BUILDERS)
        raise RecipeError(f"{where} holds {odd!r}, which is not {known_formats()}.")
    if len(builders) > 1:
        raise RecipeError(f"{where} mixes data formats ({', '.join(sorted(builders))}); keep one format per dataset.")
    return builders.pop()


def known_formats() -> str:
    return "/".join(BUILDERS)


def _declared_patterns(path: Path, config: str | None) -> dict | None:
    """{split: file patterns} of `config` as the folder's README declares it (its default, or its only config, when
    `config` is None or `default`); None when the README declares no configs."""
    readme = path / "README.md"
    declared = MetadataConfigs.from_dataset_card_data(DatasetCard.load(readme).data) if readme.is_file() else {}
    if not declared:
        if config not in (None, "default"):
            raise RecipeError(f"The dataset folder {str(path)!r} declares no configs (README.md), not {config!r}.")
        return None
    if config in (None, "default") and config not in declared:
        config = declared.get_default_config_name() or (next(iter(declared)) if len(declared) == 1 else None)
    if config not in declared:
        raise RecipeError(
            f"The dataset folder {str(path)!r} declares the configs {sorted(declared)} (README.md); name one with "
            f"`config` (`dataset_config`), not {config!r}."
        )
    return sanitize_patterns(declared[config].get("data_files"))


def split_files(path: Path, file_split: str, config: str | None = None) -> dict[str, list[str]]:
    """{split: files} of a local data file (its split: `file_split`) or folder, as datasets sorts them: by the
    README's declared configs, else by file name; files of other kinds in a folder (a README, say) are left out, as
    datasets leaves them out."""
    if path.is_file():
        builder_of([str(path)], f"The dataset {str(path)!r}")
        return {file_split: [str(path)]}
    try:
        patterns = _declared_patterns(path, config) or get_data_patterns(str(path))
        found = DataFilesDict.from_local_or_remote(patterns, base_path=str(path))
    except FileNotFoundError:  # datasets' errors for a folder with no data files are FileNotFoundErrors
        found = {}
    splits = {str(split): [f for f in files if Path(f).suffix.lower() in BUILDERS] for split, files in found.items()}
    splits = {split: files for split, files in splits.items() if files}
    if not splits:
        raise RecipeError(
            f"The dataset folder {str(path)!r} holds no {known_formats()} files (nor a `save_to_disk` dataset)."
        )
    return splits
