"""Supervised fine-tuning with a Givens (GOFT) adapter, with TRL's SFTTrainer (as `GoftSFTTrainer`).

    accelerate launch recipes/sft.py --config recipes/configs/smollm2/sft_givens.yaml [--learning_rate 1e-2 ...]

Data: conversations in a `messages` column (local JSON/JSONL or a Hub id). Rerunning the same command resumes from
the last checkpoint in `output_dir`; a finished run there is refused.
"""

from trl import SFTConfig

from goft.data.stages import SFT
from goft.evaluation.tasks import sft_task_metrics
from goft.training.arguments.cli import make_recipe_parser, run_recipe
from goft.training.prepare import prepare_run
from goft.training.publish.summary import print_summary
from goft.training.trainers import GoftSFTTrainer


def make_parser():
    return make_recipe_parser(SFTConfig)


def main(data_args, training_args, model_args, adapter_args, retention_args, recipe_yaml):
    run = prepare_run(SFT, data_args, training_args, model_args, adapter_args, retention_args, recipe_yaml)
    trainer = run.make_trainer(GoftSFTTrainer)
    held_out = run.task_eval_dataset(trainer)
    if held_out is not None and trainer.accelerator.is_main_process:
        run.record_task_metrics("before", sft_task_metrics(trainer, held_out, adapter_enabled=False))
    run.record_retention(trainer, "before")
    trainer.train(resume_from_checkpoint=run.resume_from)
    run.record_retention(trainer, "after")
    if held_out is not None and trainer.accelerator.is_main_process:
        run.record_task_metrics("after", sft_task_metrics(trainer, held_out, adapter_enabled=True))
    print_summary(trainer, run, run.finish(trainer))


if __name__ == "__main__":
    run_recipe(make_parser, main)
