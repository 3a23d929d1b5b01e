"""The range of every training key and the files keys name, checked before anything loads: a value that cannot work
is refused with the key, the value given, the accepted range and a fix, and so is a run that would train nothing.

One place decides each key; these are left to their own checks: the retention, forgetting, replay and anchor keys
(`goft.training.trainers.forgetting.check_retention_arguments`), `dataset_test_size` (`goft.data.loading`), the
Givens and SORSA keys (`GivensConfig`, `SorsaConfig`), `resume_from_checkpoint` (`goft.training.runs.checkpoints`),
`gguf_file` (`goft.io.model_source`), and what transformers refuses while the recipe is parsed (`warmup_steps` < 0,
`logging_steps` 0, a fractional `save_steps` above 1).

Why this module is long: it is one table, a rule per key, read top to bottom; a new key's range goes here, next to
the keys it interacts with. Cut by key group, one key's rule would have to be searched for in several files.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub

from goft.errors import RecipeError
from goft.io.paths import looks_like_local_path

TEMPLATE_SUFFIXES = (".jinja", ".j2")
SEED_LIMIT = 2**32  # numpy's seeds are 32-bit


@dataclass(frozen=True)
class Bound:
    """The values a key accepts: a test and the same in words."""

    test: Callable[[object], bool]
    words: str


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def whole(low: int, high: int | None = None, none_ok: bool = False, even: bool = False) -> Bound:
    """A whole number in [low, high) (no upper end without `high`), even if asked; null too with `none_ok`."""

    def test(value) -> bool:
        if value is None:
            return none_ok
        return _whole(value) and value >= low and (high is None or value < high) and not (even and value % 2)

    words = f"{'an even' if even else 'a'} whole number " + (f">= {low}" if high is None else f"in [{low}, {high})")
    return Bound(test, words + (" or null" if none_ok else ""))


def real(
    low: float, high: float | None = None, low_open: bool = False, high_open: bool = False, none_ok: bool = False
) -> Bound:
    """A finite number between `low` and `high` (each end open or closed); null too with `none_ok`."""

    def test(value) -> bool:
        if value is None:
            return none_ok
        if not _real(value):
            return False
        above = value > low if low_open else value >= low
        return above and (high is None or (value < high if high_open else value <= high))

    if high is None:
        words = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        words = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Bound(test, words + (" or null" if none_ok else ""))


STEPS = Bound(
    lambda value: _whole(value) and (value == -1 or value >= 1),
    "-1 (train `num_train_epochs` epochs) or a whole number >= 1",
)


def _never(value) -> bool:
    return False


def _always(values: dict) -> bool:
    return True


def _adapter_is(*methods: str) -> Callable[[dict], bool]:
    return lambda values: values.get("adapter") in methods


def _strategy_is_steps(key: str) -> Callable[[dict], bool]:
    return lambda values: values.get(key) == "steps"


@dataclass(frozen=True)
class Rule:
    """One key's range: `fix` says how to mend a bad value, `used` whether the run reads the key, `idle` which
    values train nothing."""

    key: str
    bound: Bound
    fix: str
    used: Callable[[dict], bool] = _always
    idle: Callable[[object], bool] = _never


RULES = (
    Rule(
        "max_steps",
        STEPS,
        "Set e.g. `max_steps: 100`, or drop the key to train `num_train_epochs` epochs.",
        idle=lambda value: value == 0,
    ),
    Rule(
        "num_train_epochs",
        real(0, low_open=True),
        "Set e.g. `num_train_epochs: 1` (fractions train part of an epoch), or set `max_steps`.",
        used=lambda values: values.get("max_steps") == -1,
        idle=lambda value: value == 0,
    ),
    Rule(
        "learning_rate",
        real(0, low_open=True),
        "Set e.g. `learning_rate: 1.0e-4` (on the command line `--learning_rate 1e-4`).",
        idle=lambda value: value == 0,
    ),
    Rule(
        "per_device_train_batch_size",
        whole(1),
        "Set e.g. `per_device_train_batch_size: 8`; when memory is short, "
        "lower it and raise `gradient_accumulation_steps`.",
    ),
    Rule("per_device_eval_batch_size", whole(1), "Set e.g. `per_device_eval_batch_size: 8`."),
    Rule("gradient_accumulation_steps", whole(1), "Set it to 1 to step the optimizer after every batch."),
    Rule("eval_accumulation_steps", whole(1, none_ok=True), "Drop the key, or set a whole number of steps."),
    Rule(
        "max_length",
        whole(1, none_ok=True),
        "Set the tokens per example, e.g. `max_length: 1024`, or null for no limit.",
    ),
    Rule("weight_decay", real(0), "Set 0 for none, or e.g. `weight_decay: 0.01`."),
    Rule("max_grad_norm", real(0), "Set e.g. `max_grad_norm: 1.0`; 0 turns gradient clipping off."),
    Rule("adam_beta1", real(0, 1, high_open=True), "Set e.g. `adam_beta1: 0.9`."),
    Rule("adam_beta2", real(0, 1, high_open=True), "Set e.g. `adam_beta2: 0.999`."),
    Rule("adam_epsilon", real(0, low_open=True), "Set e.g. `adam_epsilon: 1.0e-8`."),
    Rule("label_smoothing_factor", real(0, 1, high_open=True), "Set 0 for none, or e.g. 0.1."),
    Rule("neftune_noise_alpha", real(0, low_open=True, none_ok=True), "Drop the key for no noise, or set e.g. 5."),
    Rule("seed", whole(0, SEED_LIMIT), "Set e.g. `seed: 42`."),
    Rule("data_seed", whole(0, SEED_LIMIT, none_ok=True), "Drop the key to use `seed`, or set e.g. 42."),
    Rule(
        "save_steps",
        real(0, low_open=True),
        "Set the optimizer steps between checkpoints, e.g. `save_steps: 500` "
        '(below 1: a fraction of the run), or `save_strategy: "no"`.',
        used=_strategy_is_steps("save_strategy"),
    ),
    Rule(
        "logging_steps",
        real(0, low_open=True),
        "Set e.g. `logging_steps: 10` (below 1: a fraction of the run).",
        used=_strategy_is_steps("logging_strategy"),
    ),
    Rule(
        "eval_steps",
        real(0, low_open=True, none_ok=True),
        "Set e.g. `eval_steps: 50`, or drop the key to evaluate every `logging_steps`.",
        used=_strategy_is_steps("eval_strategy"),
    ),
    Rule("dataloader_num_workers", whole(0), "Set 0 to load data in the main process."),
    Rule("dataset_num_proc", whole(1, none_ok=True), "Drop the key, or set the processes that prepare the data."),
    Rule("max_prompt_length", whole(1, none_ok=True), "Set the prompt tokens kept, e.g. `max_prompt_length: 512`."),
    Rule("task_eval_samples", whole(0), "Set 0 to skip the before/after task metrics, or e.g. 40."),
    Rule("beta", real(0, low_open=True), "Set e.g. `beta: 0.1` (larger: stay closer to the reference model)."),
    Rule("label_smoothing", real(0, 0.5), "Set 0 for plain DPO, or e.g. 0.1 for noisy preference labels."),
    Rule("precompute_ref_batch_size", whole(1, none_ok=True), "Drop the key to use the eval batch size."),
    Rule(
        "ref_model_sync_steps",
        whole(1),
        "Set e.g. `ref_model_sync_steps: 512`.",
        used=lambda values: bool(values.get("sync_ref_model")),
    ),
    Rule(
        "ref_model_mixup_alpha",
        real(0, 1),
        "Set e.g. `ref_model_mixup_alpha: 0.6`.",
        used=lambda values: bool(values.get("sync_ref_model")),
    ),
    Rule("hra_r", whole(1), "Set e.g. `hra_r: 8` (even: the adapter starts as the identity).", used=_adapter_is("hra")),
    Rule(
        "hra_lambda",
        real(0),
        "Set 0 to turn the regulariser off, or e.g. `hra_lambda: 1.0e-4`.",
        used=_adapter_is("hra"),
    ),
    Rule(
        "oft_block_size",
        whole(1),
        "Set e.g. `oft_block_size: 32`; it must divide the adapted layers' widths.",
        used=_adapter_is("oft"),
    ),
    Rule("boft_block_size", whole(1), "Set e.g. `boft_block_size: 4`.", used=_adapter_is("boft")),
    Rule("boft_n_butterfly_factor", whole(1), "Set e.g. `boft_n_butterfly_factor: 1`.", used=_adapter_is("boft")),
    Rule(
        "road_group_size",
        whole(2, even=True),
        "Set e.g. `road_group_size: 64`; it must divide the adapted layers' widths.",
        used=_adapter_is("road"),
    ),
    Rule("lora_r", whole(1), "Set e.g. `lora_r: 16`.", used=_adapter_is("lora")),
    Rule(
        "lora_alpha",
        real(0, low_open=True),
        "Set e.g. `lora_alpha: 32` (often twice `lora_r`).",
        used=_adapter_is("lora"),
    ),
    Rule(
        "lora_dropout",
        real(0, 1, high_open=True),
        "Set 0 for none, or e.g. `lora_dropout: 0.05`.",
        used=_adapter_is("lora"),
    ),
)


def recipe_values(*argument_objects) -> dict:
    """Every key of the run's argument objects with its value (the first object that has a key wins)."""
    values: dict = {}
    for arguments in argument_objects:
        for key, value in vars(arguments).items():
            values.setdefault(key, value)
    return values


def refusal(rule: Rule, value) -> str:
    """The error message for `value` of `rule.key`: the key, the value, the range and the fix."""
    if rule.idle(value):
        return f"`{rule.key}` is {value!r}: the run would train nothing. It must be {rule.bound.words}. {rule.fix}"
    return f"`{rule.key}` is {value!r}, but it must be {rule.bound.words}. {rule.fix}"


def check_ranges(values: dict, rules=RULES) -> None:
    """Every key the run uses is within its range (keys the stage does not have are skipped)."""
    for rule in rules:
        if rule.key in values and rule.used(values) and not rule.bound.test(values[rule.key]):
            raise RecipeError(refusal(rule, values[rule.key]))


def check_chat_template_path(value: str | None) -> None:
    """`chat_template_path` names a .jinja/.j2 file, a tokenizer folder, or a Hub repo this machine can reach."""
    if not value:
        return
    path = Path(value).expanduser()
    if value.endswith(TEMPLATE_SUFFIXES):
        if not path.is_file():
            raise RecipeError(
                f"`chat_template_path` {value!r} is not a file: the chat template does not exist there. "
                "Give the path of an existing .jinja file, or drop the key to use the model's own."
            )
        return
    if path.is_dir():
        if not (path / "tokenizer_config.json").is_file():
            raise RecipeError(
                f"`chat_template_path` {value!r} is a folder without tokenizer_config.json. Give a "
                ".jinja template file or a tokenizer folder whose template to use."
            )
        return
    if path.exists():
        raise RecipeError(
            f"`chat_template_path` {value!r} is a file but not a chat template: name the file "
            f"{'/'.join(TEMPLATE_SUFFIXES)}, or give a tokenizer folder."
        )
    if looks_like_local_path(value):
        raise RecipeError(
            f"`chat_template_path` {value!r} does not exist. Give an existing .jinja template file or "
            "tokenizer folder, or drop the key to use the model's own template."
        )
    if huggingface_hub.constants.HF_HUB_OFFLINE and not isinstance(
        huggingface_hub.try_to_load_from_cache(value, "tokenizer_config.json"), str
    ):
        raise RecipeError(
            f"`chat_template_path` {value!r} is neither a local file or folder nor a Hub repo in the "
            "cache, and the Hub is offline (HF_HUB_OFFLINE=1). Give a local .jinja file or folder."
        )


def check_deepspeed_config(value) -> None:
    """`deepspeed` is a mapping, or names an existing JSON file holding one (transformers reads it while parsing)."""
    if value is None or isinstance(value, dict):
        return
    path = Path(str(value)).expanduser()
    if path.is_dir():
        raise RecipeError(f"`deepspeed` {value!r} is a folder; give the path of a DeepSpeed JSON config file.")
    if not path.is_file():
        if str(value).endswith(".json") or looks_like_local_path(str(value)):
            raise RecipeError(
                f"The DeepSpeed config file {value!r} (`deepspeed`) does not exist. Give an existing "
                "JSON file, or drop the key to train without DeepSpeed."
            )
        return  # transformers also reads a base64-encoded config, and refuses anything else by itself
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecipeError(f"The DeepSpeed config file {value!r} (`deepspeed`) is not valid JSON: {error}.") from None
    if not isinstance(config, dict):
        raise RecipeError(
            f"The DeepSpeed config file {value!r} (`deepspeed`) must hold a JSON object, not a {type(config).__name__}."
        )


def check_report_to(report_to) -> None:
    """Every logging integration `report_to` names is one transformers knows and whose package is installed."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    available = get_available_reporting_integrations()
    for name in names:
        if name in ("none", "all"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise RecipeError(
                f"`report_to` {name!r} is not a logging integration transformers knows: use none, all "
                f"or some of {', '.join(sorted(INTEGRATION_TO_CALLBACK))}."
            )
        if name not in available:
            raise RecipeError(
                f"`report_to` {name!r} needs its package, which is not installed here (`pip install "
                f"{name.replace('_', '-')}`), or choose `report_to: none`."
            )


def check_trackio(training_args) -> None:
    """With trackio in `report_to`: a `project` name trackio accepts and, while the Hub is offline, no Space or
    Bucket, which trackio would reach the Hub for once training starts. Without them it logs locally (see
    `logging_targets`)."""
    from goft.training.publish.logging_targets import enabled_integrations

    if "trackio" not in enabled_integrations(training_args.report_to):
        return
    from trackio.sqlite_storage import SQLiteStorage

    project = training_args.project
    try:
        SQLiteStorage.validate_project_name(project)
    except ValueError as error:
        raise RecipeError(f"`project` {project!r} cannot name a trackio project: {error}") from None
    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        return
    space_id = getattr(training_args, "trackio_space_id", None)
    remote = [
        ("`trackio_space_id`", space_id),
        ("TRACKIO_SPACE_ID (environment)", os.environ.get("TRACKIO_SPACE_ID")),
        ("`trackio_bucket_id`", getattr(training_args, "trackio_bucket_id", None)),
    ]
    for key, value in remote:
        if value:
            raise RecipeError(
                f"{key} is {value!r}, but the Hub is offline (HF_HUB_OFFLINE=1) and trackio would reach "
                "it for a Space or Bucket once training starts. Drop it (and unset TRACKIO_SPACE_ID) to "
                "log to the local trackio store ($TRACKIO_DIR, by default $HF_HOME/trackio), or go "
                "online."
            )


def check_attention(attn_implementation: str | None) -> None:
    """`attn_implementation` is eager or one transformers has registered (a Hub kernel `owner/name` is left to it)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if attn_implementation is None or "/" in attn_implementation:
        return
    known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    if attn_implementation not in known:
        raise RecipeError(
            f"`attn_implementation` {attn_implementation!r} is not one transformers knows: use one of "
            f"{', '.join(known)}, or drop the key for the model's default."
        )


def check_training_arguments(data_args, training_args, model_args, adapter_args, retention_args) -> None:
    """The type and range of every training key the run uses, the files they name and the integrations they ask
    for (see the module text)."""
    check_ranges(recipe_values(training_args, data_args, model_args, adapter_args, retention_args))
    check_chat_template_path(getattr(training_args, "chat_template_path", None))
    check_report_to(training_args.report_to)
    check_trackio(training_args)
    check_attention(model_args.attn_implementation)
