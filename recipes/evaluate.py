"""Retention / forgetting of trained adapters against their base model, one table row per adapter.

    python recipes/evaluate.py --adapters runs/sft-givens runs/sft-lora [--output_dir runs/eval]

Per adapter: the task metric with the adapter off and on (the held-out split its run made, rebuilt from
goft_run.json; or `--dataset_name`'s test split), KL and perplexity change on general text, the share of the
retention questions the base answers correctly that the tuned model still answers, the drift of its answers to open
instructions, the orthogonality error of strict Givens adapters, and the largest change of an angle between two
neurons. Writes evaluation.json and evaluation.md into `output_dir`. All adapters must share one base model, which
is loaded once.
"""

from trl import TrlParser

from goft.evaluation.arguments import EvaluateArguments, EvaluationSetArguments
from goft.evaluation.report import EVALUATION_JSON, render_table, write_evaluation
from goft.evaluation.runner import evaluate_adapters
from goft.io.outputs import check_output_location, hold_output_lock, refuse_finished_output
from goft.training.arguments.cli import run_recipe


def make_parser() -> TrlParser:
    return TrlParser((EvaluateArguments, EvaluationSetArguments))


def main(args: EvaluateArguments, set_args: EvaluationSetArguments, recipe_yaml: str) -> None:
    refuse_finished_output(args.output_dir, EVALUATION_JSON, "an evaluation", args.overwrite_output_dir)
    check_output_location(
        args.output_dir,
        {
            **{f"adapter folder {path}": path for path in args.adapters},
            "dataset": args.dataset_name,
            **set_args.set_locations(),
        },
    )
    sets = set_args.evaluation_sets(args.dataset_name)
    results = evaluate_adapters(
        args.adapters,
        base_model_name=args.base_model,
        sets=sets,
        dtype=args.dtype,
        before_loading=lambda: hold_output_lock(args.output_dir, "evaluation"),
    )
    settings = {"base_model": args.base_model or results[0]["base_model"], **sets.describe(), "dtype": args.dtype}
    results_path, table_path = write_evaluation(results, args.output_dir, settings, args.overwrite_output_dir)
    print(render_table(results))
    print(f"results: {results_path}\ntable: {table_path}", flush=True)


if __name__ == "__main__":
    run_recipe(make_parser, main)
