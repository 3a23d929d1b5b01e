"""Train every adapter method on one recipe (SFT or DPO) with a matched budget, optionally sweeping each method's
learning rate, then compare task gain and forgetting.

    python recipes/compare.py --config recipes/configs/smollm2/compare.yaml [--only givens lora] [--output_dir DIR]

Writes `comparison.md` (table), `comparison.json` (everything measured) and `comparison.png` (task gain against
forgetting) to `output_dir`, next to each method's run under `runs/` and its training log under `logs/`.
"""

from pathlib import Path

from trl import DPOConfig, SFTConfig, TrlParser

from goft.comparison import CompareArguments, compare
from goft.data.stages import STAGES
from goft.training.arguments.cli import make_recipe_parser, run_recipe

SCRIPTS = {stage: Path(__file__).resolve().parent / f"{stage}.py" for stage in STAGES}


def make_parser():
    return TrlParser((CompareArguments,))


def main(args: CompareArguments, recipe_yaml: str = "") -> None:
    parsers = {"sft": make_recipe_parser(SFTConfig), "dpo": make_recipe_parser(DPOConfig)}
    rows = compare(args, SCRIPTS, parsers)
    if args.plan_only:
        return
    output = Path(args.output_dir).resolve()
    print((output / "comparison.md").read_text())
    print(f"report: {output}/comparison.md, {output}/comparison.png ({len(rows)} runs)")


if __name__ == "__main__":
    run_recipe(make_parser, main)
