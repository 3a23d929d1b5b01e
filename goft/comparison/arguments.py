"""What a comparison is asked to do: `CompareArguments` (the recipe and its stage, the methods and their learning
rates, the evaluation sets, the task levels, where it all goes), the check of the `recipe_changes` every method
shares, and `shared_recipe`, the recipe file with those changes applied, which every run trains with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from goft.data.stages import STAGES
from goft.errors import RecipeError
from goft.evaluation.arguments import EvaluationSetArguments
from goft.evaluation.report import TASK_LEVELS
from goft.training.arguments.checks import SEED_LIMIT
from goft.training.arguments.recipe_file import load_recipe_file


@dataclass(kw_only=True)
class CompareArguments(EvaluationSetArguments):
    """`python recipes/compare.py --config recipes/configs/smollm2/compare.yaml [--only givens lora]`; the
    evaluation sets are `EvaluationSetArguments`' keys."""

    recipe: str = field(metadata={"help": "The recipe every method trains with (model, data, budget): a YAML file."})
    stage: str = field(default="sft", metadata={"help": "The recipe's stage: sft or dpo.", "choices": list(STAGES)})
    recipe_changes: dict = field(
        default_factory=dict,
        metadata={
            "help": "Recipe keys changed for every method alike, e.g. `lr_scheduler_type: cosine` to compare methods "
            "under another schedule; the budget stays matched (each method still may not change it)."
        },
    )
    methods: dict = field(
        default_factory=dict,
        metadata={
            "help": "Method name -> the recipe keys it changes (`adapter`, its hyper-parameters, `learning_rate`). "
            "A list of learning rates sweeps them: one run per value."
        },
    )
    seeds: list[int] | None = field(
        default=None,
        metadata={
            "help": "Seeds to train every (method, learning rate) with, one run each (default: the recipe's own "
            "`seed`, one run). A run with the recipe's own seed keeps its usual folder, so a sweep made with one "
            "seed counts as one of the seeds. The seed shapes the adapter's initialisation, the order of the "
            "training rows and the held-out split."
        },
    )
    only: list[str] | None = field(default=None, metadata={"help": "Run just these methods from `methods`."})
    output_dir: str = field(default="runs/smollm2-compare", metadata={"help": "Runs, logs and the report go here."})
    task_levels: list[float] = field(
        default_factory=lambda: list(TASK_LEVELS),
        metadata={
            "help": "Task levels at which each method's forgetting is interpolated: held-out answer NLL per token "
            "(SFT) or preference loss, −log σ(reward margin) (DPO; log 2 = 0.693 at the base)."
        },
    )
    plan_only: bool = field(default=False, metadata={"help": "Print the planned runs and the time estimate; stop."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier report in output_dir."})


def check_recipe_changes(args: CompareArguments) -> None:
    if not isinstance(args.recipe_changes, dict):
        raise RecipeError(f"`recipe_changes` must map recipe keys to values, got {args.recipe_changes!r}.")
    if "output_dir" in args.recipe_changes:
        raise RecipeError(
            "`recipe_changes` may not set `output_dir`: every run gets its own folder under the "
            "comparison's `output_dir`."
        )


def check_seeds(args: CompareArguments) -> None:
    """`seeds`: None, or a non-empty list of distinct non-negative integers, not also set by `recipe_changes`."""
    if args.seeds is None:
        return
    seeds = args.seeds
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < SEED_LIMIT for s in seeds)
    ):
        raise RecipeError(
            f"`seeds` must be a non-empty list of integers from 0 to {SEED_LIMIT - 1}, e.g. [42, 1, 2]; got {seeds!r}."
        )
    if len(set(seeds)) != len(seeds):
        raise RecipeError(f"`seeds` lists a seed twice ({seeds}): each seed is one run per method and rate.")
    if "seed" in args.recipe_changes:
        raise RecipeError("Set the seeds once: `seeds` and `recipe_changes: {seed: ...}` are both given.")


def recipe_seed(args: CompareArguments) -> int:
    """The seed the shared recipe trains with (transformers' default, 42, when it sets none)."""
    return int(shared_recipe(args).get("seed", 42))


def shared_recipe(args: CompareArguments) -> dict:
    """The recipe every run trains with: its file, with the comparison's `recipe_changes` applied."""
    return {**load_recipe_file(args.recipe), **args.recipe_changes}
