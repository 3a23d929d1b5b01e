"""The SFT and DPO recipes end to end with `accelerate launch`, on a tiny random Llama built offline."""

import importlib.metadata
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.recipes import assert_falling, check_ok, common_args, launch, recipe_env, run_summary, train_losses

pytestmark = pytest.mark.slow  # every test launches the recipes


@pytest.fixture(scope="module")
def sft_run(assets):
    output_dir = assets["root"] / "sft-1proc"
    result = launch("sft.py", common_args(assets["model"], assets["sft"], output_dir) + ["--task_eval_samples", "4"])
    check_ok(result)
    return output_dir, result


def test_sft_single_process_trains_saves_and_reloads(sft_run, assets):
    output_dir, result = sft_run
    assert_falling(train_losses(output_dir))
    assert (output_dir / "adapter_model.safetensors").is_file()
    config = json.loads((output_dir / "adapter_config.json").read_text())
    assert (
        config["peft_type"] == "GIVENS"
        and config["strict"]
        and config["base_model_name_or_path"] == str(assets["model"])
    )
    summary = run_summary(output_dir)
    assert summary["world_size"] == 1 and summary["parallelism"] == "one process"
    assert summary["metrics"]["orthogonality_error"] <= 1e-5
    assert "task/before/exact_match" in summary["metrics"] and "task/after/exact_match" in summary["metrics"]
    card = (output_dir / "README.md").read_text()
    for expected in (
        "- goft",
        "- givens",
        "- trl",
        "- sft",
        "import goft",
        "orthogonality_error",
        "pmlr-v235-ma24a",
        "learning_rate: 0.02",
    ):
        assert expected in card
    # what TRL's cards carry: the training hyper-parameters and the framework versions
    hyperparameters = card.split("## Training hyper-parameters")[1].split("##")[0]
    for expected in (
        "- learning_rate: 0.02",
        "- per_device_train_batch_size: 4",
        "- total_train_batch_size: 4",
        "- max_steps: 8",
        "- seed: 7",
        "- optimizer: adamw_torch",
        "- precision: fp32",
    ):
        assert expected in hyperparameters, hyperparameters
    versions = card.split("## Framework versions")[1].split("##")[0]
    for library in ("goft", "torch", "transformers", "peft", "trl", "datasets"):
        assert f"- {library}: {importlib.metadata.version(library)}" in versions, versions
    assert "adapter:" in result.stdout and "model card:" in result.stdout
    # a fresh process loads the adapter with plain peft after `import goft`; it changes the output and stays orthogonal
    script = f"""
import goft, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
base = AutoModelForCausalLM.from_pretrained({str(assets["model"])!r})
with torch.no_grad():
    plain = base(ids).logits
    model = PeftModel.from_pretrained(base, {str(output_dir)!r})
    tuned = model(ids).logits
print(f"{{(tuned - plain).abs().max().item():.6g}} {{goft.orthogonality_error(model):.3g}}")
"""
    reloaded = subprocess.run([sys.executable, "-c", script], env=recipe_env(), capture_output=True, text=True)
    check_ok(reloaded)
    change, error = map(float, reloaded.stdout.split())
    assert change > 1e-4 and error <= 1e-5


def test_sft_two_processes(assets):
    output_dir = assets["root"] / "sft-2proc"
    result = launch("sft.py", common_args(assets["model"], assets["sft"], output_dir), processes=2)
    check_ok(result)
    assert run_summary(output_dir)["world_size"] == 2 and run_summary(output_dir)["parallelism"] == "DDP"
    assert_falling(train_losses(output_dir))
    assert (output_dir / "adapter_model.safetensors").is_file()


def test_dpo_from_sft_adapter_starts_at_the_sft_policy(sft_run, assets):
    sft_dir, _ = sft_run
    output_dir = assets["root"] / "dpo-from-sft"
    args = common_args(sft_dir, assets["dpo"], output_dir) + ["--task_eval_samples", "8", "--beta", "0.5"]
    result = launch("dpo.py", args)
    check_ok(result)
    metrics = run_summary(output_dir)["metrics"]
    # the reference is the SFT policy itself: at step 0 every chosen/rejected log-ratio is exactly 0
    assert metrics["task/before/chosen_logratio"] == 0.0
    assert metrics["task/before/reward_margin"] == 0.0
    assert metrics["task/after/reward_margin"] > 0.0
    assert metrics["orthogonality_error"] <= 1e-5
    assert_falling(train_losses(output_dir))
    assert not (output_dir / "ref").exists()  # the frozen reference copy is not part of the result
    saved = load_file(output_dir / "adapter_model.safetensors")
    sft = load_file(sft_dir / "adapter_model.safetensors")
    assert saved.keys() == sft.keys()
    assert any(not torch.equal(saved[k], sft[k]) for k in saved)  # the policy moved on from the SFT adapter
    assert "continued from the adapter" in (output_dir / "README.md").read_text()


def test_dpo_two_processes_from_base_model(assets):
    output_dir = assets["root"] / "dpo-2proc"
    args = common_args(assets["model"], assets["dpo"], output_dir) + ["--task_eval_samples", "8"]
    result = launch("dpo.py", args, processes=2)
    check_ok(result)
    summary = run_summary(output_dir)
    assert summary["world_size"] == 2
    assert summary["metrics"]["task/before/reward_margin"] == 0.0  # reference = adapter disabled = base
    assert_falling(train_losses(output_dir))
    assert "- dpo" in (output_dir / "README.md").read_text()


def hub_env(hub_url: str, home: Path, token: str | None) -> dict:
    env = {k: v for k, v in recipe_env().items() if not k.startswith(("HF_", "HUGGING_FACE_HUB_"))}
    env.update(
        HF_ENDPOINT=hub_url,
        HF_HUB_OFFLINE="0",
        TRANSFORMERS_OFFLINE="0",
        HF_HOME=str(home),
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    if token:
        env["HF_TOKEN"] = token
    return env


def test_push_to_a_hub_and_load_back_without_leaking_a_token(assets, tmp_path):
    """The token in the YAML recipe (and another in HF_TOKEN) is used for the push, and appears nowhere: not in the
    logs, the model card, the pushed files, nor any file of the run (checkpoints pickle the trainer's arguments)."""
    from tests.support.hub_server import LocalHub

    token, env_token = "hf_FakeTokenForTests1234567890", "hf_OtherFakeTokenInTheEnvironment42"
    repo = "someuser/tiny-goft-sft"
    output_dir = tmp_path / "sft-pushed"
    recipe = tmp_path / "push.yaml"
    recipe.write_text(f"push_to_hub: true\nhub_model_id: {repo}\nhub_token: {token}\nlog_level: info\n")
    with LocalHub(tmp_path / "hub") as hub:
        env = hub_env(hub.url, tmp_path / "hf-home", env_token)
        result = launch(
            "sft.py",
            ["--config", str(recipe)] + common_args(assets["model"], assets["sft"], output_dir, steps=4),
            env=env,
        )
        check_ok(result)
        files = hub.files(repo)
        assert {
            "adapter_config.json",
            "adapter_model.safetensors",
            "README.md",
            "tokenizer.json",
            "tokenizer_config.json",
        } <= set(files)
        assert not any(name.startswith("checkpoint-") or name.endswith((".bin", ".pt")) for name in files)
        card = files["README.md"].decode()
        assert f'PeftModel.from_pretrained(base, "{repo}")' in card and "push_to_hub: true" in card
        assert "hub_token: <redacted>" in card
        written = [p.read_bytes() for p in output_dir.rglob("*") if p.is_file()]
        assert any(p.name == "training_args.bin" for p in output_dir.rglob("*"))  # a pickle that once held it
        for secret in (token, env_token):
            for data in (result.stdout.encode(), result.stderr.encode(), *files.values(), *written):
                assert secret.encode() not in data
        assert not list(output_dir.rglob("adapter_model.bin"))  # adapters are written as safetensors only
        assert {auth for _, _, auth in hub.requests if auth} == {f"Bearer {token}"}  # the recipe's token was used
        # a fresh process loads the pushed adapter and tokenizer from the server and reproduces the local logits
        script = f"""
import goft, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
def logits(adapter):
    base = AutoModelForCausalLM.from_pretrained({str(assets["model"])!r})
    with torch.no_grad():
        return PeftModel.from_pretrained(base, adapter)(ids).logits
remote, local = logits({repo!r}), logits({str(output_dir)!r})
assert AutoTokenizer.from_pretrained({repo!r}).chat_template
print((remote - local).abs().max().item())
"""
        loaded = subprocess.run(
            [sys.executable, "-c", script],
            env=hub_env(hub.url, tmp_path / "hf-home2", None),
            capture_output=True,
            text=True,
            timeout=300,
        )
        check_ok(loaded)
        assert float(loaded.stdout.split()[-1]) == 0.0


def test_rerun_resumes_from_the_last_checkpoint(assets, tmp_path):
    output_dir = tmp_path / "sft-resume"
    args = common_args(assets["model"], assets["sft"], output_dir, steps=6) + ["--save_steps", "3"]
    check_ok(launch("sft.py", args))
    uninterrupted = load_file(output_dir / "adapter_model.safetensors")
    # simulate a run killed after its step-3 checkpoint: only checkpoint-3 survives
    for leftover in [output_dir / "checkpoint-6", *output_dir.glob("*.*")]:
        subprocess.run(["rm", "-rf", str(leftover)], check=True)
    assert sorted(p.name for p in output_dir.iterdir()) == ["checkpoint-3"]
    resumed = launch("sft.py", args)
    check_ok(resumed)
    assert "checkpoint-3" in resumed.stderr  # "Resuming from .../checkpoint-3"
    history = json.loads((output_dir / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3, 4, 5, 6]
    final = load_file(output_dir / "adapter_model.safetensors")
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(final[name], tensor, rtol=0, atol=1e-6)
    # the same command once more: the finished run is refused, nothing is touched
    again = launch("sft.py", args)
    assert again.returncode != 0 and "holds a finished run" in again.stderr
    torch.testing.assert_close(load_file(output_dir / "adapter_model.safetensors")[name], final[name])


@pytest.mark.parametrize(
    "flags, penalty_logged",
    [
        (["--givens_quasi", "true"], True),
        (["--adapter", "lora"], False),
        (["--assistant_only_loss", "true"], False),
    ],
)
def test_sft_variants(assets, tmp_path, flags, penalty_logged):
    output_dir = tmp_path / "sft-variant"
    result = launch("sft.py", common_args(assets["model"], assets["sft"], output_dir, steps=4) + flags)
    check_ok(result)
    history = json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    logged = [e["qgoft_penalty"] for e in history if "qgoft_penalty" in e]
    assert bool(logged) == penalty_logged
    if penalty_logged:
        assert all(math.isfinite(x) and x >= 0 for x in logged) and logged[-1] > 0
    strict = "--givens_quasi" not in flags and "lora" not in flags
    assert ("orthogonality_error" in run_summary(output_dir)["metrics"]) == strict  # only strict adapters report it
    assert_falling(train_losses(output_dir))
