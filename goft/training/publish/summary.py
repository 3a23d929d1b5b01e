"""What a finished stage reports: the training metrics it keeps, and the summary printed last (task metric before
and after, retention, where the adapter, card and logs were written)."""

import os

from goft.training.publish.logging_targets import log_destinations


def final_training_metrics(trainer) -> dict:
    wanted = ("train_loss", "train_runtime", "eval_loss", "eval_rewards/margins", "eval_rewards/accuracies")
    found = {}
    for entry in trainer.state.log_history:
        found.update({k: v for k, v in entry.items() if k in wanted})
    found["global_step"] = trainer.state.global_step
    return found


def print_summary(trainer, run, metrics: dict) -> None:
    """What the user wants to see last (`run`: the stage's `RecipeRun`): the task metric before and after, and where
    things were written."""
    if not trainer.accelerator.is_main_process:
        return
    lines = [f"== goft {run.stage.name} finished after {metrics.get('global_step')} steps =="]
    for key, value in metrics.items():
        if (
            key.startswith(("task/", "retention/", "replay/", "anchor/", "forgetting/", "task_target/"))
            or key == "orthogonality_error"
        ):
            lines.append(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    if "forgetting/stopped_at_step" in metrics:
        lines.append(
            f"  forgetting budget: KL {metrics['forgetting/stopped_kl']:.4g} > "
            f"{metrics['forgetting/budget_kl']:g} at step {metrics['forgetting/stopped_at_step']}; training "
            f"stopped and the saved adapter is the one of step {metrics['forgetting/kept_step']} "
            f"(KL {metrics['forgetting/kept_kl']:.4g})"
        )
    output = os.path.abspath(run.training_args.output_dir)
    lines.append(f"  adapter: {output}/adapter_model.safetensors")
    lines.append(f"  model card: {output}/README.md")
    for name, destination in log_destinations(run.training_args).items():
        lines.append(f"  logs ({name}): {destination}")
    if "hub_url" in metrics:
        lines.append(f"  pushed to: {metrics['hub_url']}")
    print("\n".join(lines), flush=True)
