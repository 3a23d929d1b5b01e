"""Merge a trained adapter into its base model and save a standalone model that plain transformers loads.

python recipes/merge.py --adapter_path runs/sft --output_dir runs/sft-merged [--base_model ID] [--dtype bfloat16]
"""

from trl import TrlParser

from goft.io.outputs import hold_output_lock
from goft.training.arguments.cli import run_recipe
from goft.training.arguments.fields import MergeArguments
from goft.training.publish.merging import check_merge_inputs, merge_adapter


def make_parser() -> TrlParser:
    return TrlParser((MergeArguments,))


def main(args: MergeArguments, recipe_yaml: str = "") -> None:
    adapter = check_merge_inputs(
        args.adapter_path, args.output_dir, args.base_model, args.dtype, args.overwrite_output_dir
    )
    hold_output_lock(args.output_dir, "merge")
    print(f"Merged model written to {merge_adapter(adapter, args.output_dir, args.dtype)}")


if __name__ == "__main__":
    run_recipe(make_parser, main)
