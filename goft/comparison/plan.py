"""The runs of a comparison, planned and checked before anything trains: the methods of `methods` (or of `only`),
one `Run` per learning rate when a method sweeps them, each in its own folder under `output_dir/runs`; the matched
budget (`MATCHED_KEYS`) that no method may change; and every run's full recipe parsed with the stage's parser, its
keys passed as command-line flags (`as_flags`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from goft.comparison.arguments import CompareArguments, check_recipe_changes, check_seeds, recipe_seed
from goft.data.stages import STAGES
from goft.errors import RecipeError
from goft.training.arguments.recipe_file import check_recipe_values, load_recipe_file

# What makes the budget matched: a method may not change these.
MATCHED_KEYS = (
    "model_name_or_path",
    "gguf_file",
    "dtype",
    "dataset_name",
    "dataset_mixture",
    "datasets",
    "test_split_size",
    "dataset_test_size",
    "seed",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "output_dir",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "beta",
)


@dataclass(frozen=True)
class Run:
    name: str  # the method's name, with "@lr=<value>" when it sweeps learning rates, ",seed=<s>" for another seed
    group: str  # the method's name
    overrides: dict
    output_dir: Path
    seed: int | None = None  # the seed it trains with

    def flags(self) -> list[str]:
        return as_flags(self.overrides)

    @property
    def learning_rate(self):
        return self.overrides.get("learning_rate")


def _flag_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def as_flags(keys: dict) -> list[str]:
    """Recipe keys as command-line flags (`--key value`, a list as several values)."""
    flags = []
    for key, value in keys.items():
        values = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *(_flag_value(v) for v in values)]
    return flags


def _method_runs(name: str, overrides: dict, root: Path) -> list[Run]:
    rates = overrides.get("learning_rate")
    if not isinstance(rates, list):
        return [Run(name, name, overrides, root / name)]
    if not rates or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in rates):
        raise RecipeError(
            f"Method {name!r}: `learning_rate` must be a positive number or a non-empty list of them, got {rates!r}."
        )
    if len(set(rates)) != len(rates):
        raise RecipeError(f"Method {name!r}: `learning_rate` lists a value twice ({rates}).")
    return [
        Run(f"{name}@lr={rate:g}", name, {**overrides, "learning_rate": rate}, root / f"{name}-lr{rate:g}")
        for rate in rates
    ]


def _seeded(run: Run, seeds: list[int] | None, own_seed: int) -> list[Run]:
    """`run` once per seed. The recipe's own seed keeps the run's name and folder (a sweep made with one seed is
    one of the seeds); another seed is passed as `--seed` and named in the run's name and folder."""
    runs = []
    for seed in seeds or [own_seed]:
        if seed == own_seed:
            runs.append(replace(run, seed=seed))
            continue
        joiner = "," if "@" in run.name else "@"
        runs.append(
            Run(
                f"{run.name}{joiner}seed={seed}",
                run.group,
                {**run.overrides, "seed": seed},
                run.output_dir.with_name(f"{run.output_dir.name}-seed{seed}"),
                seed,
            )
        )
    return runs


def plan_runs(args: CompareArguments, parser) -> list[Run]:
    """The runs to make, each checked by parsing its full recipe with the stage's `parser`; refuses bad input before
    any training."""
    if args.stage not in STAGES:
        raise RecipeError(f"`stage` must be one of {', '.join(STAGES)}, got {args.stage!r}.")
    if not Path(args.recipe).is_file():
        raise RecipeError(f"The recipe {args.recipe!r} does not exist.")
    # the shared recipe file as the recipes read it: no repeated key, values of their keys' types
    check_recipe_values(load_recipe_file(args.recipe), parser, args.recipe)
    if not args.methods:
        raise RecipeError("`methods` is empty: give each method's recipe keys, e.g. `lora: {adapter: lora}`.")
    check_recipe_changes(args)
    check_seeds(args)
    if args.recipe_changes:
        try:  # a bad shared key is named as such, not as a fault of the first method
            parser.parse_args_and_config(args=["--config", args.recipe, *as_flags(args.recipe_changes)])
        except (ValueError, SystemExit) as error:
            raise RecipeError(
                f"`recipe_changes` do not parse ({error}; see the message above for a bad choice)."
            ) from None
    names = list(args.methods) if args.only is None else list(args.only)
    unknown = [n for n in names if n not in args.methods]
    if unknown:
        raise RecipeError(f"`only` names {unknown}, which `methods` does not define ({', '.join(args.methods)}).")
    for label, path in (
        ("general-text", args.general_text),
        ("retention question", args.retention_questions),
        ("open-instruction", args.open_instructions),
    ):
        if not Path(path).is_file():
            raise RecipeError(f"The {label} file {path!r} does not exist.")
    if not args.task_levels or any(not level > 0 for level in args.task_levels):
        raise RecipeError(
            "`task_levels` must be positive task levels (answer NLL per token, or preference loss for "
            f"DPO), got {args.task_levels}."
        )
    runs = []
    for name in names:
        overrides = args.methods[name] or {}
        if not isinstance(overrides, dict):
            raise RecipeError(f"Method {name!r} must map recipe keys to values, got {overrides!r}.")
        fixed = [k for k in overrides if k in MATCHED_KEYS]
        if fixed:
            raise RecipeError(
                f"Method {name!r} changes {fixed}: those keys are the matched budget, the same for "
                "every method (set them in the recipe or in `recipe_changes`)."
            )
        shared = [k for k in overrides if k in args.recipe_changes]
        if shared:
            raise RecipeError(f"Method {name!r} sets {shared}, which `recipe_changes` already sets for every method.")
        method_runs = _method_runs(name, overrides, Path(args.output_dir) / "runs")
        for run in [seeded for each in method_runs for seeded in _seeded(each, args.seeds, recipe_seed(args))]:
            try:  # unknown keys and bad values fail here, for every run, before anything trains
                parser.parse_args_and_config(
                    args=["--config", args.recipe, *as_flags(args.recipe_changes), *run.flags()]
                )
            except (ValueError, SystemExit) as error:
                raise RecipeError(f"Method {name!r}: its recipe keys do not parse ({error}).") from None
            runs.append(run)
    return runs
