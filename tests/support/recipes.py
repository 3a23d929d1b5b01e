"""Running the recipes as a user would: their offline environment, `accelerate launch` command lines, and what a
finished run leaves (`goft_run.json`, the logged losses)."""

import functools
import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

from goft.comparison.plan import as_flags
from goft.io.outputs import FINISHED_MARKER

from .ports import free_port

REPO = Path(__file__).resolve().parents[2]
CPU_2PROC = REPO / "accelerate_configs" / "cpu_2proc.yaml"
FAULTS = REPO / "tests" / "fault_injection"
SCRIPTS = REPO / "tests" / "scripts"
RESULT_FILE = FINISHED_MARKER
# What a short test run of a recipe sets unless it says otherwise (`run_flags`)
SHORT_RUN = dict(per_device_train_batch_size=4, learning_rate="2e-2", logging_steps=1, max_length=64, report_to="none")


def recipe_env() -> dict:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=str(REPO),
        TOKENIZERS_PARALLELISM="false",
        WANDB_DISABLED="true",
    )
    env.pop("HF_TOKEN", None)
    return env


def recipe_flags(**keys) -> list[str]:
    """Recipe keys as command-line flags, in the order given: `goft.comparison.plan.as_flags` (`--key value`; a
    list gives several values, a boolean `true`/`false`, anything else its `str`, so write "2e-2" to pass 2e-2)."""
    return as_flags(keys)


def fault_env(**faults) -> dict:
    """The recipe environment with the fault-injection `sitecustomize` first on PYTHONPATH and GOFT_FAULT_* set."""
    env = recipe_env()
    env["PYTHONPATH"] = os.pathsep.join([str(FAULTS), env["PYTHONPATH"]])
    env.update({f"GOFT_FAULT_{name.upper()}": str(value) for name, value in faults.items()})
    return env


def launch(
    script: str,
    args: list[str],
    processes: int = 1,
    env: dict | None = None,
    port: int | None = None,
    config_file: Path | None = None,
):
    """`accelerate launch` a recipe (or a script given by its full path) like a user would; returns the finished
    process (output captured)."""
    return run_command(launch_command(script, args, processes, port, config_file), env)


def run_command(command: list, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`command` (its parts as strings) run from the repository, in the recipe environment unless `env` is given;
    returns the finished process (output captured)."""
    command = [str(part) for part in command]
    return subprocess.run(command, cwd=REPO, env=env or recipe_env(), capture_output=True, text=True, timeout=timeout)


def script_command(name: str, args: list) -> list[str]:
    """The command line of `recipes/<name>` run by python itself, without a launcher."""
    return [sys.executable, str(REPO / "recipes" / name), *map(str, args)]


def run_script(name: str, args: list, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`recipes/<name>` run by python itself with `args`, as `run_command` runs it."""
    return run_command(script_command(name, args), env, timeout)


def launch_command(
    script: str, args: list[str], processes: int = 1, port: int | None = None, config_file: Path | None = None
) -> list[str]:
    """The `accelerate launch` command line of a recipe (or of a script given by its full path). Two processes use
    the CPU multi-process config unless `config_file` names another (e.g. a DeepSpeed one, whose GPU settings are
    overridden for the CPU), and meet on `port` (default: one free right now)."""
    if processes == 1:
        launcher = recipe_flags(num_processes=1, num_machines=1, mixed_precision="no", dynamo_backend="no")
    elif config_file is None:
        launcher = recipe_flags(config_file=CPU_2PROC, main_process_port=port or free_port())
    else:
        launcher = recipe_flags(
            config_file=config_file,
            num_processes=processes,
            mixed_precision="no",
            main_process_port=port or free_port(),
        )
    return [sys.executable, "-m", "accelerate.commands.launch", *launcher, str(REPO / "recipes" / script), *args]


@functools.cache
def recipe_script(name: str) -> dict:
    """The globals of `recipes/<name>.py`, run as a module (not as `__main__`): `make_parser` and `main` for
    `goft.training.arguments.cli.run_recipe`, to run a recipe in-process."""
    return runpy.run_path(str(REPO / "recipes" / f"{name}.py"), run_name=f"{name}_recipe")


def io_flags(model, data, output_dir, **keys) -> list[str]:
    """`--model_name_or_path model --dataset_name data --output_dir output_dir`, then `keys` as flags; a key (or
    `data`) that is None is left out."""
    keys = {"model_name_or_path": model, "dataset_name": data, "output_dir": output_dir, **keys}
    return recipe_flags(**{key: value for key, value in keys.items() if value is not None})


def run_flags(model, data, output_dir, **keys) -> list[str]:
    """The flags of a short test run: `io_flags` with `SHORT_RUN` updated by `keys` (a key that `keys` sets again
    keeps its place)."""
    return io_flags(model, data, output_dir, **{**SHORT_RUN, **keys})


def common_args(model: Path, data: Path, output_dir: Path, steps: int = 8) -> list[str]:
    return run_flags(model, data, output_dir, max_steps=steps, save_steps=4, seed=7, dataloader_num_workers=0)


def check_ok(result) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def train_losses(output_dir: Path) -> list[float]:
    last = max(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def assert_falling(losses: list[float]) -> None:
    assert losses and all(math.isfinite(x) for x in losses), losses
    k = max(len(losses) // 3, 1)
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k, losses


def run_summary(output_dir: Path) -> dict:
    return json.loads((output_dir / RESULT_FILE).read_text())
