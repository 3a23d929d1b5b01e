"""Every bad recipe input is refused by the real command before any model is loaded: the process exits with status 2,
its last line says what is wrong (and how to fix it), no traceback is shown, and nothing is written to `output_dir`.

Each case runs `python recipes/<stage>.py ...` in a fresh process, as a user would (without the launcher, whose own
output is not the recipe's).
"""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from goft import GivensConfig

from .recipe_assets import build_tiny_chat_model, dpo_rows, sft_rows, write_jsonl
from .test_recipes import REPO, recipe_env

FAKE_TOKEN = "hf_FakeTokenNeverValid0123456789abcdef"


@dataclass
class Assets:
    root: Path
    paths: dict = field(default_factory=dict)

    def __getitem__(self, key: str) -> str:
        return str(self.paths[key])


def _config_only_model(folder: Path, config) -> Path:
    """A model folder with nothing but config.json: enough for every check, and proof that no weights were read."""
    config.save_pretrained(folder)
    return folder


def _adapter_folder(model_dir: Path, folder: Path, base_name: str) -> Path:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    get_peft_model(model, GivensConfig(task_type="CAUSAL_LM")).save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_name
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def _custom_code_model(folder: Path, marker: Path) -> Path:
    """A model whose config needs its own Python code; running that code leaves `marker` behind."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "goft_probe", "auto_map": {"AutoConfig": "configuration_probe.ProbeConfig",
                                                 "AutoModelForCausalLM": "modeling_probe.ProbeModel"}}))
    (folder / "configuration_probe.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class ProbeConfig(PretrainedConfig):\n    model_type = 'goft_probe'\n")
    return folder


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Assets:
    root = tmp_path_factory.mktemp("bad-inputs")
    a = Assets(root)
    model = build_tiny_chat_model(root / "tiny")
    a.paths["model"] = model
    a.paths["sft"] = write_jsonl(sft_rows(8), root / "sft.jsonl")
    a.paths["dpo"] = write_jsonl(dpo_rows(8), root / "dpo.jsonl")
    a.paths["empty"] = write_jsonl([], root / "empty.jsonl")
    a.paths["broken"] = root / "broken.jsonl"
    a.paths["broken"].write_text(json.dumps(sft_rows(1)[0]) + "\n" + '{"messages": [{"role": "user"\n')
    a.paths["text_only"] = write_jsonl([{"text": "hello", "label": 1}] * 4, root / "text.jsonl")
    # a copy of the model whose tokenizer has no chat template, and one with a template without generation markers
    no_template = Path(shutil.copytree(model, root / "no-template"))
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    a.paths["no_template"] = no_template
    plain_template = Path(shutil.copytree(model, root / "plain-template"))
    (plain_template / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain_template / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    (plain_template / "tokenizer_config.json").write_text(json.dumps(config))
    a.paths["plain_template"] = plain_template
    tiny = AutoModelForCausalLM.from_pretrained(model).config
    a.paths["wide"] = _config_only_model(root / "wide", LlamaConfig(**{**tiny.to_dict(), "hidden_size": 64,
                                                                      "architectures": None}))
    a.paths["gpt2"] = _config_only_model(root / "gpt2", GPT2Config(vocab_size=tiny.vocab_size, n_embd=48, n_layer=2,
                                                                   n_head=4))
    a.paths["narrow"] = _config_only_model(root / "narrow", LlamaConfig(**{**tiny.to_dict(), "intermediate_size": 1,
                                                                          "architectures": None}))
    a.paths["adapter_on_wide"] = _adapter_folder(model, root / "adapter-wide", str(a.paths["wide"]))
    a.paths["adapter_on_gpt2"] = _adapter_folder(model, root / "adapter-gpt2", str(a.paths["gpt2"]))
    pickled = Path(shutil.copytree(_adapter_folder(model, root / "adapter-bin", str(model)), root / "adapter-bin-only"))
    torch.save(load_file(pickled / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    a.paths["adapter_bin"] = pickled
    a.paths["marker"] = root / "custom-code-ran"
    a.paths["custom"] = _custom_code_model(root / "custom", a.paths["marker"])
    broken_bnb = root / "broken-bnb" / "bitsandbytes"
    broken_bnb.mkdir(parents=True)
    (broken_bnb / "__init__.py").write_text("raise ImportError('libbitsandbytes_cpu.so: cannot open shared object')\n")
    a.paths["broken_bnb"] = broken_bnb.parent
    a.paths["misspelled_yaml"] = root / "misspelled.yaml"
    a.paths["misspelled_yaml"].write_text(yaml.safe_dump({"model_name_or_path": str(model), "learning_rat": 1e-3}))
    return a


@dataclass(frozen=True)
class Case:
    stage: str
    args: Callable[[Assets], list[str]]
    expected: tuple[str, ...]
    env: Callable[[Assets], dict] = lambda a: {}


def base(a: Assets, data: str = "sft", model: str = "model") -> list[str]:
    return ["--model_name_or_path", a[model], "--dataset_name", a[data], "--report_to", "none"]


CASES = {
    "misspelled-yaml-key": Case("sft", lambda a: ["--config", a["misspelled_yaml"], "--dataset_name", a["sft"]],
                                ("Unknown recipe key", "'learning_rat' (did you mean 'learning_rate'?)")),
    "unknown-flag": Case("sft", lambda a: base(a) + ["--lora_rank", "8"], ("Unknown recipe key", "'lora_rank'")),
    "abbreviated-flag": Case("sft", lambda a: base(a) + ["--learning_rat", "1e-3"], ("did you mean 'learning_rate'",)),
    "dpo-not-orthogonal": Case("dpo", lambda a: base(a, "dpo") + ["--adapter", "lora"],
                               ("exactly orthogonal", "LoRA", "allow_non_orthogonal_alignment")),
    "dpo-quasi-givens": Case("dpo", lambda a: base(a, "dpo") + ["--givens_quasi", "true"], ("exactly orthogonal",
                                                                                             "qGOFT")),
    "target-modules-match-nothing": Case("sft", lambda a: base(a) + ["--adapter_target_modules", "qkv_proj"],
                                         ("match no layer", "q_proj 48→48 (×2)", "down_proj 80→48 (×2)")),
    "layer-too-narrow-for-givens": Case("sft", lambda a: base(a, model="narrow")
                                        + ["--adapter_target_modules", "down_proj"],
                                        ("down_proj", "at least 2 input features", "this one has 1")),
    "layer-width-wrong-for-road": Case("sft", lambda a: base(a) + ["--adapter", "road", "--road_group_size", "64"],
                                       ("divisible by group_size (64)", "q_proj 48→48")),
    "dataset-missing": Case("sft", lambda a: base(a) + ["--dataset_name", str(a.root / "nope.jsonl")],
                            ("does not exist", "nope.jsonl")),
    "dataset-empty": Case("sft", lambda a: base(a, "empty"), ("is empty",)),
    "dataset-malformed-json": Case("sft", lambda a: base(a, "broken"), ("not valid JSONL", "line 2")),
    "dataset-missing-columns": Case("sft", lambda a: base(a, "text_only"), ("['messages']", "['text', 'label']")),
    "dpo-dataset-missing-columns": Case("dpo", lambda a: base(a, "sft"), ("'prompt'", "'chosen'", "['messages']")),
    "no-chat-template": Case("sft", lambda a: base(a, model="no_template"), ("no chat template",)),
    "template-without-generation-markers": Case("sft", lambda a: base(a, model="plain_template")
                                                + ["--assistant_only_loss", "true"], ("{% generation %}",)),
    "fp16-without-gpu": Case("sft", lambda a: base(a) + ["--fp16", "true"], ("fp16", "no GPU")),
    "4bit-without-working-bitsandbytes": Case("sft", lambda a: base(a) + ["--load_in_4bit", "true"],
                                              ("working bitsandbytes", "cannot open shared object"),
                                              env=lambda a: {"PYTHONPATH": f"{a['broken_bnb']}{os.pathsep}{REPO}"}),
    "adapter-on-wider-base": Case("dpo", lambda a: base(a, "dpo", model="adapter_on_wide"),
                                  ("does not fit", "k_proj.givens_angles: [47] in the adapter, [63] for this base")),
    "adapter-on-other-architecture": Case("dpo", lambda a: base(a, "dpo", model="adapter_on_gpt2"),
                                          ("does not fit", "(gpt2)", "c_attn")),
    "adapter-not-safetensors": Case("dpo", lambda a: base(a, "dpo", model="adapter_bin"),
                                    ("adapter_model.safetensors", "['adapter_model.bin']", "only from safetensors")),
    "custom-code-not-trusted": Case("sft", lambda a: base(a, model="custom"), ("trust_remote_code", "own Python code")),
    "resume-from-missing-checkpoint": Case("sft", lambda a: base(a) + ["--resume_from_checkpoint",
                                                                       str(a.root / "no-checkpoint")],
                                           ("resume_from_checkpoint", "is not a folder")),
    "push-without-repo-id": Case("sft", lambda a: base(a) + ["--push_to_hub", "true"], ("hub_model_id",)),
    "push-without-token": Case("sft", lambda a: base(a) + ["--push_to_hub", "true", "--hub_model_id", "me/x"],
                               ("no Hub token", "hf auth login")),
    "token-on-command-line": Case("sft", lambda a: base(a) + ["--hub_token", FAKE_TOKEN],
                                  ("Do not pass `--hub_token` on the command line",)),
}


def run_refused(stage: str, args: list[str], output_dir: Path, env: dict | None = None) -> str:
    """Run a recipe that must be refused; returns its error line after checking how it failed. HF_HOME is a fresh
    folder, so no login token of this machine is found."""
    result = subprocess.run([sys.executable, str(REPO / "recipes" / f"{stage}.py"), *args, "--output_dir",
                             str(output_dir)], cwd=REPO,
                            env={**recipe_env(), "HF_HOME": str(output_dir.parent / "hf-home"), **(env or {})},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "Loading weights" not in result.stderr  # refused before any model was loaded
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    return last


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_before_any_work(assets, tmp_path, name):
    if name == "fp16-without-gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    case = CASES[name]
    output_dir = tmp_path / "out"
    message = run_refused(case.stage, case.args(assets), output_dir, case.env(assets))
    for expected in case.expected:
        assert expected in message, message
    assert FAKE_TOKEN not in message
    assert not output_dir.exists()  # nothing was written, not even an empty folder
    assert not assets.paths["marker"].exists()  # the untrusted model's code never ran


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_finished_run_is_refused_and_left_untouched(assets, tmp_path):
    output_dir = tmp_path / "finished"
    output_dir.mkdir()
    (output_dir / "goft_run.json").write_text('{"stage": "sft"}\n')
    (output_dir / "adapter_model.safetensors").write_bytes(b"the user's adapter")
    (output_dir / "checkpoint-4").mkdir()
    (output_dir / "checkpoint-4" / "trainer_state.json").write_text("{}")
    before = _snapshot(output_dir)
    message = run_refused("sft", base(assets), output_dir)
    assert "holds a finished run" in message and "--overwrite_output_dir true" in message
    assert _snapshot(output_dir) == before


def test_a_token_the_hub_rejects_is_refused_before_training(assets, tmp_path):
    from .hub_server import LocalHub

    output_dir = tmp_path / "out"
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({"hub_token": FAKE_TOKEN, "push_to_hub": True, "hub_model_id": "me/adapter"}))
    with LocalHub(tmp_path / "hub", rejected_tokens=(FAKE_TOKEN,)) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
               "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "HF_HUB_DISABLE_TELEMETRY": "1"}
        message = run_refused("sft", ["--config", str(config)] + base(assets), output_dir, env)
    assert "rejected the token" in message and FAKE_TOKEN not in message
    assert any(path.startswith("/api/whoami") for _, path, _ in hub.requests)
    assert not any(path.startswith("/api/repos/create") for _, path, _ in hub.requests)
    assert not output_dir.exists()
