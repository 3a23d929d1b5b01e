"""Where a recipe's data comes from: the data keys (`dataset_name`, `dataset_mixture`, TRL's `datasets`, splits),
shared by training and by the evaluation of saved adapters."""

from dataclasses import dataclass, field

from trl import ScriptArguments


@dataclass
class DataArguments(ScriptArguments):
    """Where the data comes from: `dataset_name` is a local data file or folder (see `goft.data.layouts`), or a Hub
    dataset id; or `dataset_mixture` mixes several of them (see `goft.data.mixtures`), or alignment-handbook's older
    `dataset_mixer` does (see `goft.data.handbook_mixer`), or TRL's `datasets` list does (with TRL's
    `test_split_size` and `streaming`; see `goft.data.trl_datasets`)."""

    dataset_mixture: dict | None = field(
        default=None,
        metadata={
            "help": "Instead of `dataset_name` (YAML recipe): several datasets mixed into one, as in "
            "alignment-handbook. `datasets`: a list of {id (local file or folder, or Hub id), config, split "
            "(default train), columns (keep only these), weight (share of its rows taken, in (0, 1]; default "
            "1)}; `seed` (default: the run's) picks the rows and shuffles them; `test_split_size` (a share, or a "
            "whole number of rows; default: `dataset_test_size`) is held out of the mixed rows."
        },
    )
    datasets: list[dict] | None = field(
        default=None,
        metadata={
            "help": "Instead of `dataset_name` (YAML recipe): TRL's list of datasets mixed into one, with TRL's "
            "meaning: {path (`json` with local `data_files`, a local folder, or a Hub id), name, data_dir, "
            "data_files, split (default train), columns, fraction}; the fractions (all or none) are normalised "
            "and each dataset gives its first rows, as many as fit without taking a row twice. The held-out "
            "split is then drawn with the run's `seed`."
        },
    )
    test_split_size: float | None = field(
        default=None,
        metadata={
            "help": "With `datasets`: the share of the mixed rows (in (0, 1)) or the number of rows (a whole "
            "number, at least 1) held out as the test split (default: `dataset_test_size`)."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "With `datasets`: TRL's streaming, refused when true (goft checks every record first)."},
    )
    dataset_splits: list[str] | None = field(
        default=None,
        metadata={
            "help": "alignment-handbook's split list: with `dataset_name`, the split whose name contains 'train' is "
            "trained on and the one containing 'test' held out (carved out with `dataset_test_size` when none "
            "does); with `dataset_mixer`, the splits read from each dataset (default [train, test])."
        },
    )
    dataset_mixer: dict | None = field(
        default=None,
        metadata={
            "help": "Instead of `dataset_name` (YAML recipe): alignment-handbook's older mixture, {local path or Hub "
            "id: fraction in (0, 1]}: each dataset's 'train' splits give their first fraction of rows, its 'test' "
            "splits all theirs; both mixed and shuffled with the seed 42."
        },
    )
    dataset_configs: list[str] | None = field(
        default=None,
        metadata={"help": "With `dataset_mixer`: the config of each of its datasets, in its order."},
    )
    dataset_test_size: float = field(
        default=0.1,
        metadata={
            "help": "Held out as the test split when the dataset has no `dataset_test_split`: a share of the rows "
            "in (0, 1), or a whole number of rows (at least 1)."
        },
    )
    task_eval_samples: int = field(
        default=0,
        metadata={
            "help": "Held-out examples scored before and after training (SFT: exact match of the greedy answer; "
            "DPO: reward margin and accuracy). 0 skips it."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in an `output_dir` that holds a finished run or checkpoints; the previous run "
            "is moved aside into `overwritten-<time>/` there and deleted once the new run has finished."
        },
    )
    resume_with_changes: bool = field(
        default=False,
        metadata={
            "help": "Resume a checkpoint although the recipe or data changed since it was written: the new "
            "values apply from the resumed step (learning rate and optimizer settings included) and the model "
            "card lists each change. Without it, such a resume is refused with the differences."
        },
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "A chat template given inline, as alignment-handbook recipes write it: the tokenizer's template "
            "for this run (saved with the adapter). TRL's spelling is `chat_template_path` (a .jinja file)."
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "DPO: keep only each prompt's last `max_prompt_length` tokens (the key of TRL before 1.0 and of "
            "alignment-handbook recipes); `max_length` still bounds prompt and reply together."
        },
    )
