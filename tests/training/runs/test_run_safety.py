"""Nothing a user made is lost and nothing changes silently, with the real recipe in real processes: two runs into
one folder, a crash after `overwrite_output_dir`, a resume with changed settings, and evaluation of data that
changed since training."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from goft.errors import RecipeError
from goft.evaluation.runner import held_out_split
from goft.io.outputs import LOCK_FILE, SET_ASIDE_PREFIX
from tests.support.data import sft_rows, write_jsonl
from tests.support.models import save_tiny_chat_model
from tests.support.recipes import REPO, fault_env, recipe_flags, run_command, run_flags, run_script, script_command

pytestmark = pytest.mark.slow  # every test runs the recipes in processes
CHECKPOINT_STEPS = ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("run-safety")
    return {"model": save_tiny_chat_model(root / "tiny"), "sft": write_jsonl(sft_rows(24), root / "sft.jsonl")}


def recipe_command(assets, output_dir: Path, **keys) -> list[str]:
    """The SFT run of these tests (6 steps, a checkpoint every 2), then `keys` as flags after it: a key given again
    takes its last value."""
    flags = run_flags(
        assets["model"],
        assets["sft"],
        output_dir,
        max_steps=6,
        save_steps=2,
        per_device_train_batch_size=2,
        learning_rate="1e-3",
        lr_scheduler_type="constant",
        seed=3,
        dataloader_num_workers=0,
    )
    return script_command("sft.py", flags + recipe_flags(**keys))


def run(assets, output_dir: Path, env: dict | None = None, **keys) -> subprocess.CompletedProcess:
    return run_command(recipe_command(assets, output_dir, **keys), env)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def last_error(result) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), result.stderr[-3000:]
    return line


def test_a_second_run_into_a_busy_folder_is_refused_and_the_first_finishes_intact(assets, tmp_path):
    output_dir = tmp_path / "run"
    first = subprocess.Popen(
        recipe_command(assets, output_dir),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=fault_env(slow_forward=4),
    )
    try:
        deadline = time.time() + 120
        while not (output_dir / LOCK_FILE).is_file() or not (output_dir / LOCK_FILE).read_text():
            assert first.poll() is None and time.time() < deadline, "the first run never took its folder"
            time.sleep(0.2)
        second = run(assets, output_dir)
        assert "Another run is writing into" in last_error(second) and f"process {first.pid}" in second.stderr
        overwriting = run(assets, output_dir, overwrite_output_dir=True)  # not even with overwrite
        assert "Another run is writing into" in last_error(overwriting)
        _, stderr = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-3000:]
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == CHECKPOINT_STEPS
    assert json.loads((output_dir / "goft_run.json").read_text())["metrics"]["global_step"] == 6


def test_a_crash_after_overwrite_keeps_the_previous_run_until_a_new_one_has_finished(assets, tmp_path):
    output_dir = tmp_path / "run"
    assert run(assets, output_dir).returncode == 0
    finished = snapshot(output_dir)
    crashed = run(
        assets,
        output_dir,
        overwrite_output_dir=True,
        learning_rate="2e-3",
        env=fault_env(kill_while_saving="checkpoint-4/optimizer.pt"),
    )
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    aside = [p for p in output_dir.iterdir() if p.name.startswith(SET_ASIDE_PREFIX)]
    assert len(aside) == 1 and str(aside[0]) in crashed.stderr  # the message said where
    kept = snapshot(aside[0])
    assert kept == {name: data for name, data in finished.items() if name != LOCK_FILE}  # byte for byte
    assert not (output_dir / "goft_run.json").exists()
    resumed = run(assets, output_dir, overwrite_output_dir=False, learning_rate="2e-3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr and "checkpoint-2" in resumed.stderr
    assert not any(p.name.startswith(SET_ASIDE_PREFIX) for p in output_dir.iterdir())  # dropped once finished
    assert json.loads((output_dir / "goft_run.json").read_text())["metrics"]["global_step"] == 6


def test_a_resume_with_other_settings_is_refused_or_applied_and_recorded(assets, tmp_path):
    output_dir = tmp_path / "run"
    killed = run(assets, output_dir, env=fault_env(kill_while_saving="checkpoint-6/optimizer.pt"))
    assert killed.returncode == -9, killed.stderr[-3000:]
    before = snapshot(output_dir)
    refused = last_error(run(assets, output_dir, learning_rate="5e-3", max_steps=8))
    assert "learning_rate: 0.001 in the checkpoint, 0.005 now" in refused and "max_steps: 6" in refused
    assert "--resume_with_changes true" in refused and "step 4" in refused
    assert snapshot(output_dir) == before  # nothing moved, nothing written
    structural = last_error(run(assets, output_dir, adapter="lora", resume_with_changes=True))
    assert "adapter: 'givens' in the checkpoint, 'lora' now" in structural
    changed = run(assets, output_dir, learning_rate="5e-3", resume_with_changes=True)
    assert changed.returncode == 0, changed.stderr[-3000:]
    history = json.loads((output_dir / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    rates = {entry["step"]: entry["learning_rate"] for entry in history if "learning_rate" in entry}
    assert rates == {1: 1e-3, 2: 1e-3, 3: 1e-3, 4: 1e-3, 5: 5e-3, 6: 5e-3}  # what the card says is what trained
    card = (output_dir / "README.md").read_text()
    assert "## Resumed with changes" in card and "| 4 | `learning_rate` | `0.001` | `0.005` |" in card
    record = json.loads((output_dir / "goft_run.json").read_text())
    assert record["run_spec"]["changes"] == [{"step": 4, "key": "learning_rate", "before": 1e-3, "after": 5e-3}]
    assert record["run_spec"]["recipe"]["learning_rate"] == 5e-3


def test_evaluation_refuses_a_held_out_split_whose_data_changed_since_training(assets, tmp_path):
    data = write_jsonl(sft_rows(24), tmp_path / "data.jsonl")
    output_dir = tmp_path / "run"
    trained = run(assets, output_dir, dataset_name=data, max_steps=2, save_steps=2)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert len(held_out_split(output_dir)) == 3  # unchanged data: the run's own held-out rows
    rows = sft_rows(24)
    rows[5]["messages"][1]["content"] = "edited after training"
    write_jsonl(rows, data)
    with pytest.raises(RecipeError, match="changed since it was trained"):
        held_out_split(output_dir)
    evaluation = run_script("evaluate.py", recipe_flags(adapters=output_dir, output_dir=tmp_path / "eval"))
    assert "changed since it was trained" in last_error(evaluation)
    assert not (tmp_path / "eval").exists()


def test_a_merge_never_writes_into_its_inputs(assets, tmp_path):
    output_dir = tmp_path / "run"
    assert run(assets, output_dir, max_steps=2, save_steps=2).returncode == 0
    before = snapshot(output_dir)
    for target in (output_dir / "merged", output_dir):
        merge = run_script(
            "merge.py", recipe_flags(adapter_path=output_dir, output_dir=target, overwrite_output_dir=True)
        )
        assert "the adapter folder" in last_error(merge)
    assert snapshot(output_dir) == before
    assert not (output_dir / "merged").exists()
