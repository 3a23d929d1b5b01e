"""Train every adapter method on one SFT recipe with a matched budget, then compare task gain and forgetting.

    python recipes/compare.py --config recipes/configs/smollm2/compare.yaml [--only givens lora] [--output_dir DIR]

Writes `comparison.md` (table), `comparison.json` (everything measured) and `comparison.png` (task gain against
forgetting) to `output_dir`, next to each method's run under `runs/` and its training log under `logs/`.
"""

from pathlib import Path

from trl import SFTConfig, TrlParser

from goft.training.cli import make_recipe_parser, run_recipe
from goft.evaluation.compare import CompareArguments, compare

SFT_SCRIPT = Path(__file__).resolve().parent / "sft.py"


def make_parser():
    return TrlParser((CompareArguments,))


def main(args: CompareArguments, recipe_yaml: str = "") -> None:
    rows = compare(args, SFT_SCRIPT, make_recipe_parser(SFTConfig))
    if args.plan_only:
        return
    output = Path(args.output_dir).resolve()
    print((output / "comparison.md").read_text())
    print(f"report: {output}/comparison.md, {output}/comparison.png ({len(rows)} runs)")


if __name__ == "__main__":
    run_recipe(make_parser, main)
