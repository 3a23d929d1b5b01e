"""Faults: a run killed (also in the middle of writing a checkpoint) resumes from its last complete checkpoint and ends
where an uninterrupted run ends; a non-finite loss stops every process with a clear message before it reaches the
adapter; a strict adapter that is no longer orthogonal is never written into a checkpoint.

The recipe subprocesses get their faults from `tests/fault_injection/sitecustomize.py` (inert without its variables).
"""

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from goft import GivensConfig, orthogonality_error
from goft.errors import RecipeError
from goft.training.runs import checkpoints
from goft.training.runs.safeguards import ORTHOGONALITY_TOLERANCE, SafeguardsMixin
from goft.training.trainers.mixin import GoftTrainerMixin
from goft.tuners.givens.layer import GivensLayer
from tests.support.recipes import (
    REPO,
    RESULT_FILE,
    check_ok,
    common_args,
    fault_env,
    launch,
    launch_command,
    run_summary,
)

STEPS = 8
TOLERANCE = 1e-6  # resuming replays the same batches and RNG states: the result matches to round-off
NAN_MESSAGE = "The training loss is nan "


def nan_messages(stderr: str) -> list[str]:
    """The recipe's non-finite-loss errors (two processes may write theirs onto one line of the captured stderr)."""
    return [chunk for chunk in stderr.split("error: ")[1:] if chunk.startswith(NAN_MESSAGE)]


def run_args(assets, output_dir: Path, *extra: str) -> list[str]:
    """The SFT run every fault test makes: 8 steps, a checkpoint every 2."""
    return common_args(assets["model"], assets["sft"], output_dir, steps=STEPS) + ["--save_steps", "2", *extra]


def checkpoint_names(output_dir: Path) -> list[str]:
    """The `checkpoint-N` folders (not those set aside)."""
    return sorted(p.name for p in output_dir.glob("checkpoint-*"))


def complete_steps(output_dir: Path) -> list[int]:
    """The steps whose checkpoint has its completion marker."""
    markers = output_dir.glob(f"checkpoint-*/{checkpoints.COMPLETE_MARKER}")
    return sorted(int(marker.parent.name.split("-")[1]) for marker in markers)


@pytest.fixture(scope="module")
def uninterrupted(assets):
    """The adapter of the same run without any fault."""
    output_dir = assets["root"] / "uninterrupted"
    check_ok(launch("sft.py", run_args(assets, output_dir)))
    return load_file(output_dir / "adapter_model.safetensors")


def assert_ends_like(output_dir: Path, uninterrupted: dict) -> None:
    """The resumed run took the same steps and ended at the same adapter as the uninterrupted one."""
    assert run_summary(output_dir)["metrics"]["global_step"] == STEPS
    history = json.loads((output_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "loss" in e] == list(range(1, STEPS + 1))
    final = load_file(output_dir / "adapter_model.safetensors")
    assert final.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(final[name], tensor, rtol=0, atol=TOLERANCE)


def assert_usable_checkpoint(model: Path, checkpoint: Path) -> None:
    """Complete (marker), finite adapter tensors, and the adapter loads onto the base and is still orthogonal."""
    assert checkpoints.is_complete(checkpoint)
    assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "adapter_model.safetensors").values())
    with torch.no_grad():
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), checkpoint)
    assert orthogonality_error(loaded) <= ORTHOGONALITY_TOLERANCE


@pytest.mark.slow
def test_sigkill_mid_run_resumes_from_the_last_complete_checkpoint(assets, tmp_path, uninterrupted):
    output_dir = tmp_path / "killed"
    args = run_args(assets, output_dir)
    log = tmp_path / "killed.log"
    with open(log, "w") as out:  # each step sleeps 0.25 s: time to kill after checkpoint-4, well before the end
        process = subprocess.Popen(
            launch_command("sft.py", args),
            cwd=REPO,
            env=fault_env(slow_forward=0.25),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while process.poll() is None and not [s for s in complete_steps(output_dir) if s >= 4]:
            assert time.monotonic() < deadline, "no complete checkpoint-4 within 300 s:\n" + log.read_text()[-3000:]
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and the training process, like a scheduler would
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, log.read_text()[-3000:]  # killed, not finished by itself
    assert not (output_dir / RESULT_FILE).exists() and not (output_dir / "adapter_model.safetensors").exists()
    last = checkpoints.last_complete_checkpoint(str(output_dir))
    assert 4 <= int(last.rsplit("-", 1)[1]) < STEPS
    resumed = launch("sft.py", args)
    check_ok(resumed)
    assert f"Resuming from {last}" in resumed.stderr
    assert_ends_like(output_dir, uninterrupted)


@pytest.mark.slow
def test_kill_while_writing_a_checkpoint_resumes_from_the_previous_one(assets, tmp_path, uninterrupted):
    output_dir = tmp_path / "killed-saving"
    args = run_args(assets, output_dir, "--save_total_limit", "1")  # checkpoint-2 must survive even so
    killed = launch("sft.py", args, env=fault_env(kill_while_saving="checkpoint-4/optimizer.pt"))
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert checkpoint_names(output_dir) == ["checkpoint-2", "checkpoint-4"]
    assert not (output_dir / RESULT_FILE).exists()
    half_written = output_dir / "checkpoint-4" / "optimizer.pt"
    with pytest.raises(Exception):  # noqa: B017  (really half-written: whatever torch.load raises on a cut file)
        torch.load(half_written, weights_only=True)
    partial = half_written.read_bytes()
    assert not checkpoints.is_complete(output_dir / "checkpoint-4")
    assert_usable_checkpoint(assets["model"], output_dir / "checkpoint-2")

    resumed = launch("sft.py", args)
    check_ok(resumed)
    assert "checkpoint-4 has no" in resumed.stderr and "Moved it aside to incomplete-checkpoint-4" in resumed.stderr
    assert f"Resuming from {output_dir / 'checkpoint-2'}" in resumed.stderr
    assert (output_dir / "incomplete-checkpoint-4" / "optimizer.pt").read_bytes() == partial  # set aside, not deleted
    assert checkpoint_names(output_dir) == [f"checkpoint-{STEPS}"]  # save_total_limit still rotates old ones away
    assert_ends_like(output_dir, uninterrupted)


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(assets, tmp_path, uninterrupted):
    output_dir = tmp_path / "nan"
    args = run_args(assets, output_dir)
    failed = launch("sft.py", args, env=fault_env(nan_from_call=5))  # one embedding call per step: NaN at step 5
    assert failed.returncode != 0
    assert "returned non-zero exit status 2" in failed.stderr  # the recipe's own status, reported by the launcher
    recipe_stderr = failed.stderr[: failed.stderr.rindex("Traceback (most recent call last):")]  # before the launcher's
    last_line = recipe_stderr.rstrip().splitlines()[-1]
    assert last_line.startswith("error: " + NAN_MESSAGE), failed.stderr[-3000:]
    for expected in (
        "at global step 5 of 8",
        "before this step changed the adapter",
        f"The last complete checkpoint is {output_dir / 'checkpoint-4'}",
        "learning rate",
        "fp16",
    ):
        assert expected in last_line
    assert not (output_dir / "adapter_model.safetensors").exists() and not (output_dir / RESULT_FILE).exists()
    assert checkpoint_names(output_dir) == ["checkpoint-2", "checkpoint-4"]
    assert_usable_checkpoint(assets["model"], output_dir / "checkpoint-4")

    resumed = launch("sft.py", args)  # the fault is gone: the same command resumes and finishes
    check_ok(resumed)
    assert f"Resuming from {output_dir / 'checkpoint-4'}" in resumed.stderr
    assert_ends_like(output_dir, uninterrupted)


@pytest.mark.slow
def test_nan_loss_on_one_of_two_processes_stops_both(assets, tmp_path):
    output_dir = tmp_path / "nan-2proc"
    result = launch(
        "sft.py", run_args(assets, output_dir), processes=2, env=fault_env(nan_from_call=3, nan_rank=1)
    )  # only process 1's loss goes NaN, at step 3
    assert result.returncode != 0
    messages = nan_messages(result.stderr)
    assert len(messages) == 2, result.stderr[-4000:]  # both processes stopped with the message; neither waited
    for message in messages:
        assert "at global step 3 of 8 on process 1 of 2" in message
        assert f"The last complete checkpoint is {output_dir / 'checkpoint-2'}" in message
    assert not (output_dir / RESULT_FILE).exists()
    assert checkpoint_names(output_dir) == ["checkpoint-2"] and checkpoints.is_complete(output_dir / "checkpoint-2")


class FakeTrainer:
    """What `SafeguardsMixin._save_checkpoint` uses of `transformers.Trainer`; saving writes a single file."""

    def __init__(self, model, output_dir: Path, save_total_limit=None):
        self.model = model
        self.args = SimpleNamespace(output_dir=str(output_dir), save_total_limit=save_total_limit, should_save=True)
        self.state = SimpleNamespace(global_step=0, best_model_checkpoint=None)
        self.accelerator = SimpleNamespace(unwrap_model=lambda m: m, wait_for_everyone=lambda: None, num_processes=1)
        self.callback_handler = SimpleNamespace(callbacks=[])
        self.seen_while_saving = []  # (save_total_limit, checkpoint folders) at each parent save
        self.fail = False

    def _get_output_dir(self, trial):
        return self.args.output_dir

    def _save_checkpoint(self, model, trial):
        self.seen_while_saving.append((self.args.save_total_limit, checkpoint_names(Path(self.args.output_dir))))
        folder = Path(self.args.output_dir, f"checkpoint-{self.state.global_step}")
        folder.mkdir(parents=True)
        if self.fail:
            raise OSError("No space left on device")
        (folder / "adapter_model.safetensors").write_bytes(b"weights")


def save_at(trainer, step: int) -> None:
    """Save the checkpoint of `step`, as the training loop does."""
    trainer.state.global_step = step
    trainer._save_checkpoint(trainer.model, None)


def test_old_checkpoints_are_rotated_only_after_the_new_one_is_complete(tmp_path):
    trainer = type("Safe", (SafeguardsMixin, FakeTrainer), {})(None, tmp_path, save_total_limit=1)
    for step in (2, 4, 6):
        save_at(trainer, step)
        assert checkpoint_names(tmp_path) == [f"checkpoint-{step}"]
        assert checkpoints.is_complete(tmp_path / f"checkpoint-{step}")
    # while transformers wrote checkpoint-4 and -6, nothing was rotated and the previous checkpoint was still there
    assert trainer.seen_while_saving == [(None, []), (None, ["checkpoint-2"]), (None, ["checkpoint-4"])]
    assert trainer.args.save_total_limit == 1
    trainer.fail = True
    with pytest.raises(OSError):
        save_at(trainer, 8)
    assert trainer.args.save_total_limit == 1  # restored
    assert not checkpoints.is_complete(tmp_path / "checkpoint-8") and checkpoints.is_complete(tmp_path / "checkpoint-6")


def test_a_strict_adapter_that_is_not_orthogonal_is_not_checkpointed(tmp_path, tiny_llama, monkeypatch):
    config = GivensConfig()
    trainer = type("Fake", (GoftTrainerMixin, FakeTrainer), {})(get_peft_model(tiny_llama, config), tmp_path)
    assert isinstance(trainer, SafeguardsMixin) and trainer.strict_orthogonal  # on by default for strict adapters
    save_at(trainer, 2)  # orthogonal: saved and marked complete
    assert checkpoints.is_complete(tmp_path / "checkpoint-2")

    exact = GivensLayer.rotation_blocks
    monkeypatch.setattr(GivensLayer, "rotation_blocks", lambda layer, name: (1.001 * exact(layer, name)[0], True))
    error = orthogonality_error(trainer.model)
    assert error > ORTHOGONALITY_TOLERANCE
    with pytest.raises(RecipeError) as refused:
        save_at(trainer, 4)
    message = str(refused.value)
    assert f"orthogonality error is {error:.3g}" in message and "checkpoint-4 was not written" in message
    assert not (tmp_path / "checkpoint-4").exists() and len(trainer.seen_while_saving) == 1  # nothing was written


def make_checkpoint(folder: Path, step: int, complete: bool) -> Path:
    """A stand-in `checkpoint-N` folder, marked complete or not."""
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    if complete:
        checkpoints.mark_complete(str(checkpoint), {"global_step": step})
    return checkpoint


def test_resume_takes_the_newest_complete_checkpoint_and_sets_newer_incomplete_ones_aside(
    tmp_path, monkeypatch, caplog
):
    for step, complete in [(1, False), (2, True), (3, False), (4, True), (6, False), (8, False)]:
        make_checkpoint(tmp_path, step, complete)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert checkpoints.resume_checkpoint(str(tmp_path), None, False) == str(tmp_path / "checkpoint-4")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # deciding reads only
    monkeypatch.setenv("RANK", "1")  # another process: nothing renamed
    checkpoints.set_aside_incomplete(str(tmp_path), str(tmp_path / "checkpoint-4"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    monkeypatch.setenv("RANK", "0")
    checkpoints.set_aside_incomplete(str(tmp_path), str(tmp_path / "checkpoint-4"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # older incomplete ones are left alone
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-3",
        "checkpoint-4",
        "incomplete-checkpoint-6",
        "incomplete-checkpoint-8",
    ]
    assert "Moved it aside to incomplete-checkpoint-8" in caplog.text
    make_checkpoint(tmp_path, 6, False)  # killed at the same step again: another free name
    checkpoints.set_aside_incomplete(str(tmp_path), checkpoints.resume_checkpoint(str(tmp_path), None, False))
    assert (tmp_path / "incomplete-checkpoint-6.2" / "trainer_state.json").is_file()
    explicit = str(tmp_path / "checkpoint-3")  # honoured as given, with a warning
    assert checkpoints.resume_checkpoint(str(tmp_path), explicit, False) == explicit
    assert f"`resume_from_checkpoint` {explicit} has no" in caplog.text
    assert checkpoints.resume_checkpoint(str(tmp_path), None, True) is None  # overwrite: start afresh


def test_resume_without_any_complete_checkpoint_starts_afresh(tmp_path):
    make_checkpoint(tmp_path, 3, False)
    assert checkpoints.resume_checkpoint(str(tmp_path), None, False) is None
    checkpoints.set_aside_incomplete(str(tmp_path), None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["incomplete-checkpoint-3"]
