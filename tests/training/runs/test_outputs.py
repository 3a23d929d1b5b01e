"""Where runs write (no overlap with their inputs, one run per folder, overwrite that keeps the previous run until
the new one has finished) and what a resumed run is checked against (its checkpoint's spec), in-process."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import get_scheduler

from goft.data.loading import rows_fingerprint
from goft.errors import RecipeError
from goft.io import outputs
from goft.training.runs import run_spec
from tests.support.recipes import REPO


@pytest.mark.parametrize("output, relation", [("model", "is"), ("model/sub", "lies inside"), (".", "contains")])
def test_an_output_folder_overlapping_an_input_is_refused(tmp_path, output, relation):
    (tmp_path / "model").mkdir()
    with pytest.raises(RecipeError, match=f"{relation} the model folder"):
        outputs.check_output_location(tmp_path / output, {"model folder": tmp_path / "model"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing created


def test_a_separate_output_folder_passes_and_hub_ids_are_not_paths(tmp_path):
    (tmp_path / "data.jsonl").write_text("{}\n")
    outputs.check_output_location(
        tmp_path / "runs" / "a",
        {"dataset": tmp_path / "data.jsonl", "model": "owner/model-on-the-hub", "chat template": None},
    )
    assert not (tmp_path / "runs").exists()


def test_an_output_folder_that_is_a_file_or_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(RecipeError, match="is a file, not a folder"):
        outputs.check_output_location(tmp_path / "file", {})
    with pytest.raises(RecipeError, match="cannot be created"):
        outputs.check_output_location(tmp_path / "file" / "sub", {})
    assert (tmp_path / "file").read_text() == "mine"


def test_an_output_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    """The nearest existing folder is asked for write access (as the permission bits would answer a non-root user)."""
    asked = []
    monkeypatch.setattr(os, "access", lambda path, mode: asked.append(Path(path)) or False)
    with pytest.raises(RecipeError, match=f"no write permission on '{tmp_path}'"):
        outputs.check_output_location(tmp_path / "new" / "run", {})
    assert asked == [tmp_path]


HOLD_LOCK = (
    "import sys, time; from goft.io import outputs; outputs.hold_output_lock(sys.argv[1]); "
    "print('locked', flush=True); time.sleep(60)"
)


def start_lock_holder(folder: Path) -> subprocess.Popen:
    """A process that takes the output lock of `folder`, says "locked" and holds it for a minute."""
    return subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.mark.slow
def test_one_run_per_folder_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    folder = tmp_path / "run"
    holder = start_lock_holder(folder)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RecipeError, match=f"Another run is writing into .*process {holder.pid}"):
            outputs.hold_output_lock(folder)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    outputs.hold_output_lock(folder)  # the operating system released the dead process's lock
    outputs.hold_output_lock(folder)  # held by this process already: nothing to do
    assert str(os.getpid()) in (folder / outputs.LOCK_FILE).read_text()


def test_overwrite_moves_the_previous_run_aside_and_drops_it_once_a_new_run_finished(tmp_path):
    folder = tmp_path / "run"
    (folder / "checkpoint-4").mkdir(parents=True)
    (folder / "checkpoint-4" / "optimizer.pt").write_bytes(b"state")
    (folder / "goft_run.json").write_text("{}")
    (folder / "replay.json").write_text("cache")
    (folder / outputs.LOCK_FILE).write_text("")
    aside = outputs.set_aside_previous_run(folder)
    assert aside.name.startswith(outputs.SET_ASIDE_PREFIX)
    assert sorted(p.name for p in folder.iterdir()) == sorted([outputs.LOCK_FILE, "replay.json", aside.name])
    assert (aside / "checkpoint-4" / "optimizer.pt").read_bytes() == b"state"
    (folder / "checkpoint-2").mkdir()  # the new run crashed after its first checkpoint; overwritten once more
    second = outputs.set_aside_previous_run(folder)
    assert second != aside and sorted(p.name for p in second.iterdir()) == ["checkpoint-2"]
    assert outputs.set_aside_runs(folder) == sorted([aside, second])
    assert outputs.set_aside_previous_run(folder) is None  # nothing left to move
    outputs.drop_set_aside_runs(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([outputs.LOCK_FILE, "replay.json"])


def _spec(**recipe):
    data = DatasetDict({"train": Dataset.from_list([{"x": 1}, {"x": 2}]), "test": Dataset.from_list([{"x": 3}])})
    spec = run_spec.build_spec((), data)
    spec["recipe"] = {"learning_rate": 1e-3, "max_steps": 8, "adapter": "givens", "logging_steps": 1, **recipe}
    return spec


def test_resume_with_other_settings_is_refused_with_the_differences_listed():
    recorded, current = _spec(), _spec(learning_rate=2e-3)
    current["data"]["train"] = "0" * 64
    with pytest.raises(RecipeError) as refused:
        run_spec.checked_resume_spec(current, recorded, "out/checkpoint-4", 4, allow_changes=False)
    message = str(refused.value)
    assert "learning_rate: 0.001 in the checkpoint, 0.002 now" in message
    assert "data (train split)" in message and "--resume_with_changes true" in message and "step 4" in message
    assert run_spec.checked_resume_spec(_spec(), recorded, "out/checkpoint-4", 4, False)["changes"] == []


def test_resume_with_changes_records_each_change_and_structure_never_changes():
    first = run_spec.checked_resume_spec(_spec(learning_rate=2e-3), _spec(), "c-4", 4, allow_changes=True)
    assert first["changes"] == [{"step": 4, "key": "learning_rate", "before": 1e-3, "after": 2e-3}]
    second = run_spec.checked_resume_spec(_spec(learning_rate=2e-3, max_steps=12), first, "c-8", 8, True)
    assert [(c["step"], c["key"]) for c in second["changes"]] == [(4, "learning_rate"), (8, "max_steps")]
    with pytest.raises(RecipeError, match="adapter: 'givens' in the checkpoint, 'lora' now"):
        run_spec.checked_resume_spec(_spec(adapter="lora"), _spec(), "c-4", 4, allow_changes=True)


def test_settings_that_do_not_shape_training_and_unknown_keys_are_not_compared():
    recorded = _spec()
    current = _spec(logging_steps=5)
    current["recipe"].pop("logging_steps")
    current["recipe"]["a_key_of_a_newer_version"] = 1
    assert run_spec.differences(recorded, current) == []
    assert "logging_steps" in run_spec.NOT_SHAPING and "learning_rate" not in run_spec.NOT_SHAPING


def test_rows_fingerprint_follows_content_and_order():
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    same = rows_fingerprint(Dataset.from_list(rows))
    assert same == rows_fingerprint(Dataset.from_list([{"b": "x", "a": 1}, {"b": "y", "a": 2}]))
    assert same != rows_fingerprint(Dataset.from_list(rows[::-1]))
    assert same != rows_fingerprint(Dataset.from_list([rows[0], {"a": 2, "b": "z"}]))


def test_changed_optimizer_settings_replace_what_the_checkpoint_restored():
    """A resumed AdamW + linear schedule takes the new learning rate at the point of the schedule it resumes at, and
    the new weight decay (decayed group only), betas and epsilon."""
    decayed, plain = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))

    def trained(lr, weight_decay):
        optimizer = torch.optim.AdamW(
            [{"params": [decayed], "weight_decay": weight_decay}, {"params": [plain], "weight_decay": 0.0}], lr=lr
        )
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=10)
        for _ in range(4):
            optimizer.step()
            scheduler.step()
        return optimizer, scheduler

    optimizer, scheduler = trained(1e-3, 0.0)
    args = type(
        "Args",
        (),
        {"learning_rate": 5e-3, "weight_decay": 0.1, "adam_beta1": 0.8, "adam_beta2": 0.9, "adam_epsilon": 1e-6},
    )()
    changed = {"learning_rate", "weight_decay", "adam_beta1", "adam_epsilon"}
    run_spec.apply_changed_optimizer_settings(
        optimizer, scheduler, args, changed, lambda group: group["params"][0] is decayed
    )
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([5e-3 * 6 / 10] * 2)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert all(g["betas"] == (0.8, 0.9) and g["eps"] == 1e-6 for g in optimizer.param_groups)
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([5e-3 * 5 / 10] * 2)  # the schedule goes on from the new rate
    assert math.isclose(scheduler.base_lrs[0], 5e-3)
    unchanged, _ = trained(1e-3, 0.0)
    run_spec.apply_changed_optimizer_settings(unchanged, None, args, set())
    assert [g["lr"] for g in unchanged.param_groups] == pytest.approx([1e-3 * 6 / 10] * 2)


@pytest.mark.slow
def test_a_killed_lock_holder_is_gone_before_the_lock_is_taken_again(tmp_path):
    """The lock file stays, with the dead holder's line, but does not block: a killed run never leaves it stuck."""
    folder = tmp_path / "run"
    holder = start_lock_holder(folder)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    time.sleep(0.1)
    assert f"process {holder.pid}" in (folder / outputs.LOCK_FILE).read_text()
    outputs.hold_output_lock(folder)
    assert f"process {os.getpid()}" in (folder / outputs.LOCK_FILE).read_text()
