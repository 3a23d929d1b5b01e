"""A one-screen `--help` for the training recipes: goft's keys and the common training keys, each with its default
and one short line; `--help_all` prints the parser's full list (hundreds of TRL and transformers keys)."""

from __future__ import annotations

import argparse
import enum
import sys

WIDTH = 120
KEY_WIDTH = 31
DEFAULT_WIDTH = 12

GROUPS = (
    (
        "Model, data and output",
        (
            ("model_name_or_path", "Hub id, local folder, adapter folder (to continue) or embedded model"),
            ("dataset_name", "local JSON/JSONL file or folder, or a Hub dataset id"),
            ("dataset_mixture", "instead of dataset_name (YAML): datasets mixed by weight"),
            ("datasets", "or TRL's list (YAML): first rows by fraction; with test_split_size"),
            ("output_dir", "where the adapter, its model card and the checkpoints go"),
            ("overwrite_output_dir", "start afresh; the previous run is kept aside until the new one finishes"),
            ("resume_from_checkpoint", "a checkpoint folder (rerunning a command resumes by itself)"),
            ("resume_with_changes", "resume although recipe or data changed (the card lists the changes)"),
            ("max_length", "tokens per training example; longer ones are cut"),
            ("chat_template_path", "a .jinja chat template file or a tokenizer folder"),
        ),
    ),
    (
        "Adapter",
        (
            ("adapter", "givens (strict GOFT), sorsa, hra, oft, boft, road or lora"),
            ("adapter_target_modules", "layer names, a regex or all-linear; default: the usual set"),
            ("givens_quasi", "qGOFT: free 2x2 blocks kept near orthogonal by a penalty"),
            ("givens_scaling", "GOFT*: learnable per-neuron norm scaling"),
            ("givens_max_angle", "bound on every rotation angle, in radians; in (0, pi]"),
            ("sorsa_r", "SORSA: singular triplets trained"),
            ("hra_r", "HRA: Householder reflections"),
            ("oft_block_size", "OFT: size of the orthogonal blocks"),
            ("boft_block_size", "BOFT: size of the butterfly blocks"),
            ("road_group_size", "RoAd: elements per group of 2D rotations"),
            ("lora_r", "LoRA: rank (with lora_alpha, lora_dropout)"),
            ("allow_non_orthogonal_alignment", "DPO baselines only: allow an adapter not exactly orthogonal"),
        ),
    ),
    (
        "Training",
        (
            ("learning_rate", "peak learning rate (> 0)"),
            ("num_train_epochs", "epochs, when max_steps is -1"),
            ("max_steps", "optimizer steps; -1: train num_train_epochs epochs"),
            ("per_device_train_batch_size", "rows per device and step"),
            ("gradient_accumulation_steps", "steps whose gradients add up to one optimizer step"),
            ("lr_scheduler_type", "learning-rate schedule, e.g. constant_with_warmup or cosine"),
            ("warmup_steps", "steps of linear warm-up (below 1: a fraction of the run)"),
            ("seed", "seed of the adapter's start, the held-out split and the data order"),
            ("save_steps", "optimizer steps between checkpoints"),
            ("logging_steps", "optimizer steps between log lines"),
            ("assistant_only_loss", "SFT: loss on the assistant's answers only"),
            ("beta", "DPO: strength of the pull towards the reference model"),
        ),
    ),
    (
        "Retention and forgetting",
        (
            ("task_eval_samples", "held-out examples scored before and after training; 0 skips"),
            ("retention_eval", "ask the retention questions before and after training"),
            ("forgetting_budget", "largest KL(base || tuned) per token on general text; stops the run"),
            ("task_target_nll", "SFT: stop once the training answers' NLL per token reaches this"),
            ("replay_share", "SFT: share of training rows replaying the base's own answers"),
            ("anchor_weight", "weight of KL(base || tuned) on the base's own answers, in the loss"),
        ),
    ),
    (
        "Logging and the Hub",
        (
            ("report_to", "where metrics go: none, tensorboard, wandb, ..."),
            ("push_to_hub", "push the finished adapter and its model card"),
            ("hub_model_id", "owner/name of the Hub repo to push to"),
        ),
    ),
)


def _shown(value) -> str:
    """A default as a recipe file would spell it."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or value is argparse.SUPPRESS:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(item) for item in value) or "[]"
    return str(value)


def _line(key: str, default, text: str) -> str:
    shown = _shown(default)
    if len(shown) > DEFAULT_WIDTH:
        shown = shown[: DEFAULT_WIDTH - 1] + "…"
    line = f"  --{key:<{KEY_WIDTH}}{shown:<{DEFAULT_WIDTH}}  {text}"
    return line if len(line) <= WIDTH else line[: WIDTH - 1] + "…"


def short_help(parser: argparse.ArgumentParser) -> str:
    """The one-screen help: usage, the common keys by group with their defaults (a recipe file's values when
    `--config` comes first), and where the rest is."""
    defaults = {action.dest: action.default for action in parser._actions if action.option_strings}
    lines = [
        f"usage: {parser.prog} [--config RECIPE.yaml] [--KEY VALUE ...] [-h] [--help_all]",
        "Keys come from the YAML recipe (--config) and the command line, which wins. The common keys, each with",
        "its default (with --config: the recipe's value) and what it sets:",
    ]
    for title, keys in GROUPS:
        shown = [_line(key, defaults[key], text) for key, text in keys if key in defaults]
        if shown:
            lines += ["", f"{title}:", *shown]
    classes = ", ".join(kind.__name__ for kind in getattr(parser, "dataclass_types", ()))
    lines += [
        "",
        f"Every other key (of {classes}): --help_all.",
        "Recipes, shipped configs and what each key does in a run: the docs, docs/recipes.md.",
    ]
    return "\n".join(lines) + "\n"


class FullHelpAction(argparse.Action):
    """`--help_all`: the parser's full help (every key), then exit."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(parser.format_full_help())
        parser.exit()
