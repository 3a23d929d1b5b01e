"""Merge a trained adapter into its base model and save a standalone model that plain transformers loads.

python recipes/merge.py --adapter_path runs/sft --output_dir runs/sft-merged [--base_model ID] [--dtype bfloat16]
"""

from dataclasses import dataclass, field
from typing import Optional

from trl import TrlParser

from goft.io.outputs import hold_output_lock
from goft.training.arguments.cli import run_recipe
from goft.training.publish.merging import check_merge_inputs, merge_adapter


@dataclass
class MergeArguments:
    adapter_path: str = field(metadata={"help": "Directory holding adapter_config.json and the adapter weights."})
    output_dir: str = field(metadata={"help": "Where to write the merged model (must be new or empty)."})
    base_model: Optional[str] = field(
        default=None, metadata={"help": "Base model id or path; default: the one recorded in the adapter config."}
    )
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into a non-empty output_dir."})


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
