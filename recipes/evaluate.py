"""Retention / forgetting of trained adapters against their base model, one table row per adapter.

    python recipes/evaluate.py --adapters runs/sft-givens runs/sft-lora [--output_dir runs/eval]

Per adapter: the task metric with the adapter off and on (the held-out split its run made, rebuilt from
goft_run.json; or `--dataset_name`'s test split), KL and perplexity change on general text, the orthogonality error
of strict Givens adapters, and the largest change of an angle between two neurons. Writes evaluation.json and
evaluation.md into `output_dir`. All adapters must share one base model, which is loaded once.
"""

from dataclasses import dataclass, field
from typing import Optional

from trl import TrlParser

import goft  # noqa: F401  (registers the goft adapter types with peft)
from goft.training.cli import run_recipe
from goft.training.retention import DEFAULT_GENERAL_TEXT, evaluate_adapters
from goft.training.retention_report import check_output_dir, render_table, write_report


@dataclass
class EvaluateArguments:
    adapters: list[str] = field(metadata={"help": "Adapter folders to evaluate (adapter_config.json + weights)."})
    base_model: Optional[str] = field(
        default=None, metadata={"help": "Base model id or path; default: the one the adapters record."}
    )
    general_text: Optional[str] = field(
        default=None, metadata={"help": f"JSONL file of general text ({{\"text\": ...}} a line); default: "
                                f"{DEFAULT_GENERAL_TEXT}."}
    )
    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "Score every adapter's task on this dataset's test split instead of the "
                                "held-out split of its own run."}
    )
    task_eval_samples: int = field(default=40, metadata={"help": "Held-out examples for the task metric; 0 skips."})
    max_length: int = field(default=256, metadata={"help": "Tokens per general-text paragraph or preference pair."})
    dtype: str = field(default="float32", metadata={"help": "auto, float32, bfloat16 or float16."})
    output_dir: str = field(default="runs/eval", metadata={"help": "Where evaluation.json and evaluation.md go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier evaluation there."})


def make_parser() -> TrlParser:
    return TrlParser((EvaluateArguments,))


def main(args: EvaluateArguments, recipe_yaml: str) -> None:
    check_output_dir(args.output_dir, args.overwrite_output_dir)
    general_text = args.general_text or DEFAULT_GENERAL_TEXT
    results = evaluate_adapters(args.adapters, base_model_name=args.base_model, general_text_path=general_text,
                                task_samples=args.task_eval_samples, max_length=args.max_length,
                                dataset_name=args.dataset_name, dtype=args.dtype)
    settings = {"base_model": args.base_model or results[0]["base_model"], "general_text": str(general_text),
                "dataset_name": args.dataset_name, "task_eval_samples": args.task_eval_samples,
                "max_length": args.max_length, "dtype": args.dtype}
    results_path, table_path = write_report(results, args.output_dir, settings, args.overwrite_output_dir)
    print(render_table(results))
    print(f"results: {results_path}\ntable: {table_path}", flush=True)


if __name__ == "__main__":
    run_recipe(make_parser, main)
