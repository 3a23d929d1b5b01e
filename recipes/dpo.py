"""Preference alignment (DPO) with a strictly orthogonal Givens adapter, with TRL's DPOTrainer (as `GoftDPOTrainer`).

    accelerate launch recipes/dpo.py --config recipes/configs/smollm2/dpo_givens.yaml

`model_name_or_path` may be an SFT run's output folder: the policy continues that adapter and the reference model is
exactly the SFT policy. From a plain base model, the reference is the base (adapter disabled). Adapters that are not
exactly orthogonal (qGOFT, GOFT*, LoRA) are refused before any model is loaded.
"""

from trl import DPOConfig

from goft.data.stages import DPO
from goft.evaluation.tasks import dpo_task_metrics
from goft.training.arguments.cli import make_recipe_parser, run_recipe
from goft.training.prepare import prepare_run
from goft.training.publish.summary import print_summary
from goft.training.trainers import GoftDPOTrainer


def make_parser():
    return make_recipe_parser(DPOConfig)


def main(data_args, training_args, model_args, adapter_args, retention_args, recipe_yaml):
    run = prepare_run(DPO, data_args, training_args, model_args, adapter_args, retention_args, recipe_yaml)
    trainer = run.make_trainer(GoftDPOTrainer)  # continuing an SFT adapter: the reference is that adapter, frozen
    held_out = run.task_eval_dataset(trainer)
    if held_out is not None and run.resume_from is None:
        run.record_task_metrics("before", dpo_task_metrics(trainer, held_out))
    run.record_retention(trainer, "before")
    trainer.train(resume_from_checkpoint=run.resume_from)
    run.record_retention(trainer, "after")
    if held_out is not None:
        run.record_task_metrics("after", dpo_task_metrics(trainer, held_out))
    print_summary(trainer, run, run.finish(trainer))


if __name__ == "__main__":
    run_recipe(make_parser, main)
