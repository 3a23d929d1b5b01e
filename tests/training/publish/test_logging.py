"""`report_to: tensorboard` and `report_to: trackio`, offline: tiny real SFT runs write the logged losses where the
run says its logs went (`logs` in goft_run.json and the closing summary), and trackio never reaches the network.

Tests that need `recipe.py` to call `logging_targets` (set_log_defaults before the trainer is built, log_destinations
in goft_run.json and the summary) are the ones named `*_recorded_and_printed` and
`test_tensorboard_events_go_to_output_dir_runs`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from goft.errors import RecipeError
from goft.training.arguments.checks import check_trackio, check_training_arguments
from goft.training.publish import logging_targets
from goft.training.publish.logging_targets import TENSORBOARD_ENV, log_destinations, set_log_defaults
from tests.support.recipes import check_ok, common_args, launch, recipe_env, run_script, run_summary

STEPS = 3
PROJECT = "goft-logging-test"
RUN_NAME = "tiny-sft"
LOOPBACK = ("127.0.0.1", "::1", "localhost", "0.0.0.0", "")

# Loaded by every Python process of a run (it is on PYTHONPATH): records each network connection and name lookup.
NETWORK_AUDIT = """
import os, sys

_log = os.environ["GOFT_NETWORK_LOG"]
with open(_log, "a") as out:
    out.write(f"start {os.getpid()}\\n")

def _audit(event, args):
    if event == "socket.connect":
        address = args[1]
        host = address[0] if isinstance(address, tuple) else ""  # a Unix socket's path is local
    elif event == "socket.getaddrinfo":
        host = args[0]
    else:
        return
    if isinstance(host, bytes):
        host = host.decode()
    with open(_log, "a") as out:
        out.write(f"{event} {host or ''}\\n")

sys.addaudithook(_audit)
"""


def logging_env(root: Path) -> dict:
    """The recipe tests' offline environment, with trackio's store and HF_HOME under `root` and no logging
    settings inherited from the caller."""
    env = recipe_env()
    for name in (TENSORBOARD_ENV, "TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_BUCKET_ID"):
        env.pop(name, None)
    env.update(TRACKIO_DIR=str(root / "trackio"), HF_HOME=str(root / "hf-home"))
    return env


def sft_args(assets, output_dir: Path, report_to: str, *extra: str) -> list[str]:
    args = common_args(assets["model"], assets["sft"], output_dir, steps=STEPS)
    args[args.index("--report_to") + 1] = report_to
    args[args.index("--save_steps") + 1] = str(STEPS)  # a checkpoint at the last step keeps the log history
    return args + list(extra)


def logged_losses(output_dir: Path) -> dict[int, float]:
    """step -> training loss, as the trainer logged it (the last checkpoint's trainer_state.json)."""
    state = json.loads((output_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def summary_lines(stdout: str) -> list[str]:
    return stdout[stdout.index("== goft sft finished") :].splitlines()


# --- TensorBoard ---


@pytest.fixture(scope="module")
def tensorboard_run(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("tensorboard")
    output_dir = root / "out"
    result = launch("sft.py", sft_args(assets, output_dir, "tensorboard"), env=logging_env(root))
    check_ok(result)
    return root, output_dir, result


@pytest.mark.slow
def test_tensorboard_events_hold_every_logged_loss(tensorboard_run):
    root, output_dir, _ = tensorboard_run
    events = sorted((output_dir / "runs").rglob("events.out.tfevents.*"))
    assert len(events) == 1, events  # one run, one writer
    accumulator = EventAccumulator(str(events[0].parent), size_guidance={"scalars": 0})
    accumulator.Reload()
    assert "train/loss" in accumulator.Tags()["scalars"], accumulator.Tags()
    points = accumulator.Scalars("train/loss")
    logged = logged_losses(output_dir)
    assert len(logged) == STEPS  # logging_steps 1
    assert [point.step for point in points] == sorted(logged)
    assert [point.value for point in points] == pytest.approx([logged[step] for step in sorted(logged)], rel=1e-6)
    assert not (root / "trackio").exists()  # only the integration asked for


@pytest.mark.slow
def test_tensorboard_events_go_to_output_dir_runs(tensorboard_run):  # needs recipe.py's set_log_defaults call
    _, output_dir, _ = tensorboard_run
    events = list((output_dir / "runs").glob("events.out.tfevents.*"))
    assert len(events) == 1, sorted(p.relative_to(output_dir) for p in output_dir.rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_tensorboard_destination_recorded_and_printed(tensorboard_run):
    _, output_dir, result = tensorboard_run
    folder = str((output_dir / "runs").resolve())
    assert run_summary(output_dir)["logs"] == {"tensorboard": folder}
    assert f"  logs (tensorboard): {folder}" in summary_lines(result.stdout), result.stdout[-3000:]


# --- trackio ---


@pytest.fixture(scope="module")
def trackio_run(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("trackio")
    audit = root / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(NETWORK_AUDIT)
    env = logging_env(root)
    env.update(PYTHONPATH=os.pathsep.join([str(audit), env["PYTHONPATH"]]), GOFT_NETWORK_LOG=str(root / "net.log"))
    output_dir = root / "out"
    result = launch(
        "sft.py", sft_args(assets, output_dir, "trackio", "--project", PROJECT, "--run_name", RUN_NAME), env=env
    )
    check_ok(result)
    return root, output_dir, result


def trackio_cli(root: Path, *args: str) -> dict:
    """trackio's own command line, reading the store under `root` offline."""
    command = [sys.executable, "-c", "import sys; from trackio.cli import main; sys.exit(main())", *args, "--json"]
    result = subprocess.run(command, check=False, env=logging_env(root), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.slow
def test_trackio_store_holds_every_logged_loss(trackio_run):
    root, output_dir, _ = trackio_run
    assert trackio_cli(root, "list", "runs", "--project", PROJECT)["runs"] == [RUN_NAME]
    metric = {}  # metric -> {trackio's own step: value}
    for name in ("train/loss", "train/global_step"):
        values = trackio_cli(root, "get", "metric", "--project", PROJECT, "--run", RUN_NAME, "--metric", name)
        metric[name] = {entry["step"]: entry["value"] for entry in values["values"]}
    # each trackio entry carries the trainer's step as train/global_step (the closing summary too, without a loss)
    losses = {metric["train/global_step"][step]: loss for step, loss in metric["train/loss"].items()}
    logged = logged_losses(output_dir)
    assert len(logged) == STEPS
    assert sorted(losses) == sorted(logged)
    assert [losses[step] for step in sorted(losses)] == pytest.approx(
        [logged[step] for step in sorted(logged)], rel=1e-6
    )


@pytest.mark.slow
def test_trackio_writes_only_under_trackio_dir_and_stays_offline(trackio_run):
    root, output_dir, _ = trackio_run
    assert (root / "trackio" / f"{PROJECT}.db").is_file()
    assert not (root / "hf-home" / "trackio").exists()  # not the default store
    assert not list(output_dir.rglob("events.out.tfevents.*"))  # TensorBoard was not asked for
    audit = (root / "net.log").read_text().splitlines()
    assert len([line for line in audit if line.startswith("start ")]) >= 2  # the launcher and the recipe were audited
    remote = [line for line in audit if line.startswith("socket.") and line.split(" ", 1)[1] not in LOOPBACK]
    assert not remote, remote


@pytest.mark.slow
def test_trackio_destination_recorded_and_printed(trackio_run):
    root, output_dir, result = trackio_run
    database = str((root / "trackio" / f"{PROJECT}.db").resolve())
    assert run_summary(output_dir)["logs"] == {"trackio": database}
    assert f"  logs (trackio): {database}" in summary_lines(result.stdout), result.stdout[-3000:]


@pytest.mark.slow
def test_trackio_space_offline_is_refused_before_any_work(assets, tmp_path):
    output_dir = tmp_path / "out"
    args = sft_args(assets, output_dir, "trackio", "--trackio_space_id", "someone/dashboard")
    result = run_script("sft.py", args, env=logging_env(tmp_path), timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "`trackio_space_id` is 'someone/dashboard'" in last and "HF_HUB_OFFLINE=1" in last, last
    assert "Traceback" not in result.stderr
    assert not output_dir.exists() and not (tmp_path / "trackio").exists()


# --- log_destinations, set_log_defaults and the trackio checks, in-process ---


def training_args(output_dir, report_to, **overrides) -> SimpleNamespace:
    values = {
        "output_dir": str(output_dir),
        "report_to": report_to,
        "project": "huggingface",
        "trackio_space_id": None,
        "trackio_bucket_id": None,
    }
    return SimpleNamespace(**{**values, **overrides})


@pytest.fixture
def clean_logging_env(monkeypatch):
    for name in (TENSORBOARD_ENV, "TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(logging_targets, "_set_by_goft", None)
    return monkeypatch


def test_no_integration_no_destination(clean_logging_env, tmp_path):
    for report_to in ([], "none", ["none"], None):
        assert log_destinations(training_args(tmp_path, report_to)) == {}
        set_log_defaults(training_args(tmp_path, report_to))
        assert TENSORBOARD_ENV not in os.environ


def test_tensorboard_destination_defaults_to_output_dir_runs(clean_logging_env, tmp_path):
    clean_logging_env.chdir(tmp_path)
    args = training_args("relative/out", ["tensorboard"])
    expected = str(tmp_path / "relative" / "out" / "runs")
    assert log_destinations(args) == {"tensorboard": expected}
    set_log_defaults(args)
    assert os.environ[TENSORBOARD_ENV] == expected  # what transformers' TensorBoard callback reads
    assert log_destinations(args) == {"tensorboard": expected}


def test_a_second_run_gets_its_own_tensorboard_default(clean_logging_env, tmp_path):
    set_log_defaults(training_args(tmp_path / "a", "tensorboard"))
    second = training_args(tmp_path / "b", "tensorboard")
    set_log_defaults(second)
    assert os.environ[TENSORBOARD_ENV] == str(tmp_path / "b" / "runs")
    assert log_destinations(second) == {"tensorboard": str(tmp_path / "b" / "runs")}


def test_the_users_tensorboard_folder_is_kept(clean_logging_env, tmp_path):
    clean_logging_env.setenv(TENSORBOARD_ENV, "~/my-tb")
    args = training_args(tmp_path, ["tensorboard"])
    set_log_defaults(args)
    assert os.environ[TENSORBOARD_ENV] == "~/my-tb"
    assert log_destinations(args) == {"tensorboard": os.path.join(os.path.expanduser("~"), "my-tb")}


def test_trackio_remote_destinations_are_described_without_tokens(clean_logging_env, tmp_path):
    assert log_destinations(training_args(tmp_path, ["trackio"], trackio_space_id="me/dash")) == {
        "trackio": "https://huggingface.co/spaces/me/dash"
    }
    clean_logging_env.setenv("TRACKIO_SPACE_ID", "org/board")
    assert (
        log_destinations(training_args(tmp_path, ["trackio"]))["trackio"] == "https://huggingface.co/spaces/org/board"
    )
    clean_logging_env.delenv("TRACKIO_SPACE_ID")
    clean_logging_env.setenv("TRACKIO_SERVER_URL", "http://127.0.0.1:7860/?write_token=secret123")
    destination = log_destinations(training_args(tmp_path, ["trackio"]))["trackio"]
    assert "127.0.0.1:7860" in destination and "secret123" not in destination


def test_other_integrations_are_listed_in_order(clean_logging_env, tmp_path):
    destinations = log_destinations(training_args(tmp_path, ["wandb", "tensorboard"]))
    assert list(destinations) == ["wandb", "tensorboard"]
    assert "wandb" in destinations["wandb"]


@pytest.mark.slow
def test_trackio_local_destination_is_the_projects_database(tmp_path):
    """In a fresh process: trackio reads TRACKIO_DIR when it is imported."""
    script = (
        "from types import SimpleNamespace\n"
        "from goft.training.publish.logging_targets import log_destinations\n"
        "print(log_destinations(SimpleNamespace(output_dir='out', report_to=['trackio', 'tensorboard'], "
        "project='my.project', trackio_space_id=None))['trackio'])\n"
    )
    env = logging_env(tmp_path)
    env["TRACKIO_DIR"] = "relative-store"
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # trackio keeps [A-Za-z0-9_-] of the project's name for its file
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "relative-store" / "myproject.db")


def test_report_to_all_includes_both_once_installed(clean_logging_env, tmp_path):
    destinations = log_destinations(training_args(tmp_path, "all"))
    assert {"tensorboard", "trackio"} <= set(destinations)


@pytest.mark.parametrize("field, value", [("trackio_space_id", "someone/dashboard"), ("trackio_bucket_id", "bucket")])
def test_trackio_hub_settings_are_refused_offline(clean_logging_env, tmp_path, field, value):
    clean_logging_env.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(RecipeError, match=f"`{field}` is '{value}'.*HF_HUB_OFFLINE=1"):
        check_trackio(training_args(tmp_path, ["trackio"], **{field: value}))
    check_trackio(training_args(tmp_path, ["tensorboard"], **{field: value}))  # trackio is off: nothing to refuse
    clean_logging_env.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    check_trackio(training_args(tmp_path, ["trackio"], **{field: value}))  # online: left to trackio


def test_trackio_space_from_the_environment_is_refused_offline(clean_logging_env, tmp_path):
    clean_logging_env.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    check_trackio(training_args(tmp_path, ["trackio"]))  # local logging offline is fine
    clean_logging_env.setenv("TRACKIO_SPACE_ID", "someone/dashboard")
    with pytest.raises(RecipeError, match="TRACKIO_SPACE_ID"):
        check_trackio(training_args(tmp_path, ["trackio"]))


def test_a_project_name_trackio_refuses_is_refused_first(clean_logging_env, tmp_path):
    with pytest.raises(RecipeError, match="`project` 'registry-x' cannot name a trackio project"):
        check_trackio(training_args(tmp_path, ["trackio"], project="registry-x"))


def test_check_training_arguments_runs_the_trackio_check(clean_logging_env, tmp_path):
    clean_logging_env.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    args = training_args(tmp_path, ["trackio"], trackio_space_id="someone/dashboard", chat_template_path=None)
    model_args = SimpleNamespace(attn_implementation=None)
    with pytest.raises(RecipeError, match="trackio_space_id"):
        check_training_arguments(SimpleNamespace(), args, model_args, SimpleNamespace(), SimpleNamespace())
