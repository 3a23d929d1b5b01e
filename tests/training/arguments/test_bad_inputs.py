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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig

from goft import GivensConfig
from tests.support.data import dpo_rows, sft_rows, write_jsonl
from tests.support.forked_runs import ForkedRuns
from tests.support.models import save_tiny_chat_model, tiny_config
from tests.support.recipes import REPO, recipe_env, recipe_flags

pytestmark = pytest.mark.slow  # every test runs a recipe in a process (most forked from one worker)
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
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "goft_probe",
                "auto_map": {
                    "AutoConfig": "configuration_probe.ProbeConfig",
                    "AutoModelForCausalLM": "modeling_probe.ProbeModel",
                },
            }
        )
    )
    (folder / "configuration_probe.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class ProbeConfig(PretrainedConfig):\n    model_type = 'goft_probe'\n"
    )
    return folder


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Assets:
    root = tmp_path_factory.mktemp("bad-inputs")
    a = Assets(root)
    model = save_tiny_chat_model(root / "tiny")
    a.paths["model"] = model
    a.paths["sft"] = write_jsonl(sft_rows(8), root / "sft.jsonl")
    a.paths["dpo"] = write_jsonl(dpo_rows(8), root / "dpo.jsonl")
    a.paths["empty"] = write_jsonl([], root / "empty.jsonl")
    a.paths["broken"] = root / "broken.jsonl"
    a.paths["broken"].write_text(json.dumps(sft_rows(1)[0]) + "\n" + '{"messages": [{"role": "user"\n')
    a.paths["text_rows"] = write_jsonl([{"text": f"note {i}", "id": i} for i in range(8)], root / "notes.jsonl")
    implicit = [{"chosen": f"Say {i}: yes", "rejected": f"Say {i}: no"} for i in range(6)]
    implicit[2] = {"chosen": "Yes.", "rejected": "No."}
    a.paths["implicit_bad"] = write_jsonl(implicit, root / "implicit.jsonl")
    a.paths["text_only"] = write_jsonl([{"body": "hello", "label": 1}] * 4, root / "text.jsonl")
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
    a.paths["wide"] = _config_only_model(
        root / "wide", LlamaConfig(**{**tiny.to_dict(), "hidden_size": 64, "architectures": None})
    )
    a.paths["gpt2"] = _config_only_model(
        root / "gpt2", tiny_config("gpt2", vocab_size=tiny.vocab_size, n_positions=1024)
    )
    a.paths["narrow"] = _config_only_model(
        root / "narrow", LlamaConfig(**{**tiny.to_dict(), "intermediate_size": 1, "architectures": None})
    )
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
    # datasets with one bad record each (or too few records), at a known line
    sft, dpo = sft_rows(8), dpo_rows(8)
    a.paths["sft_empty_messages"] = write_jsonl(
        sft[:5] + [{"messages": []}] + sft[6:], root / "sft-empty-messages.jsonl"
    )
    a.paths["sft_null_content"] = write_jsonl(
        sft[:3] + [{"messages": [{"role": "user", "content": None}, sft[3]["messages"][1]]}] + sft[4:],
        root / "sft-null-content.jsonl",
    )
    a.paths["sft_unknown_role"] = write_jsonl(
        sft[:2] + [{"messages": [{"role": "human", "content": "hi"}, sft[2]["messages"][1]]}] + sft[3:],
        root / "sft-unknown-role.jsonl",
    )
    a.paths["sft_no_assistant"] = write_jsonl(
        sft[:4] + [{"messages": sft[4]["messages"][:1]}] + sft[5:], root / "sft-no-assistant.jsonl"
    )
    latin1 = {"messages": [{"role": "user", "content": "café"}, sft[2]["messages"][1]]}  # é is byte 0xe9
    a.paths["sft_latin1"] = root / "sft-latin1.jsonl"
    a.paths["sft_latin1"].write_bytes(
        write_jsonl(sft[:2], a.paths["sft_latin1"]).read_bytes()
        + json.dumps(latin1, ensure_ascii=False).encode("latin-1")
        + b"\n"
    )
    a.paths["sft_one_row"] = write_jsonl(sft[:1], root / "sft-one-row.jsonl")
    a.paths["dpo_identical"] = write_jsonl(
        dpo[:4] + [{**dpo[4], "rejected": dpo[4]["chosen"]}] + dpo[5:], root / "dpo-identical.jsonl"
    )
    a.paths["dpo_empty_chosen"] = write_jsonl(
        dpo[:1] + [{**dpo[1], "chosen": [{"role": "assistant", "content": ""}]}] + dpo[2:],
        root / "dpo-empty-chosen.jsonl",
    )
    a.paths["dpo_empty_chosen_text"] = write_jsonl(
        dpo[:6] + [{**dpo[6], "chosen": ""}] + dpo[7:], root / "dpo-empty-chosen-text.jsonl"
    )
    a.paths["dpo_mixed_types"] = write_jsonl(
        dpo[:3] + [{"prompt": "hi", "chosen": "yes", "rejected": "no"}] + dpo[4:], root / "dpo-mixed-types.jsonl"
    )
    _add_output_and_resume_assets(a, model)
    return a


def _add_output_and_resume_assets(a: Assets, model: Path) -> None:
    """Damaged adapters, folders whose output would overlap an input, interrupted runs whose checkpoint recorded
    other settings, and a finished run whose data changed since."""
    root = a.root
    adapter = _adapter_folder(model, root / "adapter", str(model))
    a.paths["adapter"] = adapter
    truncated = Path(shutil.copytree(adapter, root / "adapter-truncated"))
    weights = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(weights[: len(weights) * 2 // 3])
    a.paths["adapter_truncated"] = truncated
    unknown = Path(shutil.copytree(adapter, root / "adapter-unknown-type"))
    config = json.loads((unknown / "adapter_config.json").read_text())
    (unknown / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "WOBBLE"}))
    a.paths["adapter_unknown_type"] = unknown
    not_json = Path(shutil.copytree(adapter, root / "adapter-not-json"))
    (not_json / "adapter_config.json").write_text('{"peft_type": "GIVENS",')
    a.paths["adapter_not_json"] = not_json
    a.paths["recipe_latin1"] = root / "recipe-latin1.yaml"
    a.paths["recipe_latin1"].write_bytes("# café\nmax_steps: 2\n".encode("latin-1"))
    a.paths["broken_template"] = root / "broken.jinja"
    a.paths["broken_template"].write_text("{% for message in messages %}{{ message['content'] }}")
    data_folder = root / "data-folder"
    data_folder.mkdir()
    write_jsonl(sft_rows(8), data_folder / "train.jsonl")
    a.paths["data_folder"] = data_folder
    recipes = root / "recipes"
    recipes.mkdir()
    a.paths["recipe_in_folder"] = recipes / "sft.yaml"
    a.paths["recipe_in_folder"].write_text("max_steps: 2\n")
    a.paths["a_file"] = root / "notes.txt"
    a.paths["a_file"].write_text("the user's notes\n")
    base_args = base(a) + ["--output_dir"]
    a.paths["run_other_lr"] = _interrupted_run(a, root / "run-other-lr", base_args, learning_rate=0.5)
    a.paths["run_other_data"] = _interrupted_run(a, root / "run-other-data", base_args, data="0" * 64)
    a.paths["run_not_a_checkpoint"] = root / "not-a-checkpoint"
    (a.paths["run_not_a_checkpoint"] / "weights").mkdir(parents=True)
    finished = Path(shutil.copytree(adapter, root / "finished-run"))
    data = write_jsonl(sft_rows(8), root / "trained-on.jsonl")
    record = {
        "stage": "sft",
        "data": {
            "dataset_name": str(data),
            "dataset_train_split": "train",
            "dataset_test_split": "test",
            "dataset_test_size": 0.25,
            "seed": 42,
            "split_sha256": {"train": "0" * 64, "test": "1" * 64},
        },
    }
    (finished / "goft_run.json").write_text(json.dumps(record))
    a.paths["finished_run"] = finished
    shared = {"model_name_or_path": str(model), "dataset_name": a["sft"], "max_steps": 2, "report_to": "none"}
    (root / "comparison").mkdir()
    a.paths["compared_recipe"] = root / "comparison" / "sft.yaml"
    a.paths["compared_recipe"].write_text(yaml.safe_dump(shared))
    a.paths["comparison"] = root / "comparison" / "compare.yaml"
    a.paths["comparison"].write_text(
        yaml.safe_dump({"recipe": a["compared_recipe"], "stage": "sft", "methods": {"givens": {}}})
    )
    a.paths["repeated_recipe"] = root / "repeated-recipe.yaml"
    a.paths["repeated_recipe"].write_text(yaml.safe_dump(shared) + "max_steps: 3\n")
    a.paths["comparison_of_repeated"] = root / "compare-repeated.yaml"
    a.paths["comparison_of_repeated"].write_text(
        yaml.safe_dump({"recipe": a["repeated_recipe"], "stage": "sft", "methods": {"givens": {}}})
    )


def _interrupted_run(a: Assets, folder: Path, args: list[str], learning_rate=None, data=None) -> Path:
    """A run folder holding one complete checkpoint whose recorded spec is the one `args` give, but for the
    learning rate or the training data's fingerprint."""
    from trl import SFTConfig

    from goft.data.loading import load_recipe_dataset
    from goft.data.stages import SFT
    from goft.training.arguments.cli import make_recipe_parser, parse_recipe
    from goft.training.runs import checkpoints, run_spec

    parsed = parse_recipe(make_recipe_parser(SFTConfig), args + [str(folder)])[:5]
    spec = run_spec.build_spec(parsed, load_recipe_dataset(parsed[0], SFT, seed=parsed[1].seed))
    if learning_rate is not None:
        spec["recipe"]["learning_rate"] = learning_rate
    if data is not None:
        spec["data"]["train"] = data
    checkpoint = folder / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"global_step": 2}')
    checkpoints.mark_complete(str(checkpoint), {"global_step": 2, run_spec.SPEC_KEY: spec})
    return folder


@dataclass(frozen=True)
class Case:
    stage: str
    args: Callable[[Assets], list[str]]
    expected: tuple[str, ...]
    env: Callable[[Assets], dict] = lambda a: {}
    output: Callable[[Assets], Path] | None = None  # where `--output_dir` points; default: a new folder


def base(a: Assets, data: str = "sft", model: str = "model") -> list[str]:
    return recipe_flags(model_name_or_path=a[model], dataset_name=a[data], report_to="none")


def with_flags(data: str = "sft", model: str = "model", **keys) -> Callable[[Assets], list[str]]:
    """A `Case`'s arguments: `base(a, data, model)`, then `keys` as flags."""
    return lambda a: base(a, data, model) + recipe_flags(**keys)


CASES = {
    "misspelled-yaml-key": Case(
        "sft",
        lambda a: ["--config", a["misspelled_yaml"], "--dataset_name", a["sft"]],
        ("Unknown recipe key", "'learning_rat' (did you mean 'learning_rate'?)"),
    ),
    "unknown-flag": Case("sft", with_flags(lora_rank=8), ("Unknown recipe key", "'lora_rank'")),
    "abbreviated-flag": Case("sft", with_flags(learning_rat="1e-3"), ("did you mean 'learning_rate'",)),
    "dpo-not-orthogonal": Case(
        "dpo",
        with_flags(data="dpo", adapter="lora"),
        ("exactly orthogonal", "LoRA", "allow_non_orthogonal_alignment"),
    ),
    "dpo-quasi-givens": Case("dpo", with_flags(data="dpo", givens_quasi=True), ("exactly orthogonal", "qGOFT")),
    "target-modules-match-nothing": Case(
        "sft",
        with_flags(adapter_target_modules="qkv_proj"),
        ("match no layer", "q_proj 48→48 (×2)", "down_proj 80→48 (×2)"),
    ),
    "layer-too-narrow-for-givens": Case(
        "sft",
        with_flags(model="narrow", adapter_target_modules="down_proj"),
        ("down_proj", "at least 2 input features", "this one has 1"),
    ),
    "layer-width-wrong-for-road": Case(
        "sft",
        with_flags(adapter="road", road_group_size=64),
        ("divisible by group_size (64)", "q_proj 48→48"),
    ),
    "dataset-missing": Case(
        "sft", lambda a: base(a) + ["--dataset_name", str(a.root / "nope.jsonl")], ("does not exist", "nope.jsonl")
    ),
    "dataset-empty": Case("sft", lambda a: base(a, "empty"), ("is empty",)),
    "dataset-malformed-json": Case("sft", lambda a: base(a, "broken"), ("not valid JSONL", "line 2")),
    "dataset-missing-columns": Case(
        "sft", lambda a: base(a, "text_only"), ("none of the columns the SFT stage reads", "['body', 'label']")
    ),
    "dpo-dataset-missing-columns": Case(
        "dpo",
        lambda a: base(a, "sft"),
        ("none of the columns the DPO stage reads", "`chosen`/`rejected`", "['messages']"),
    ),
    "task-samples-on-text-rows": Case(
        "sft",
        lambda a: base(a, "text_rows") + ["--task_eval_samples", "4"],
        ("`task_eval_samples` 4", "language modeling rows (`text`) have no answer"),
    ),
    "dpo-implicit-row-without-a-shared-start": Case(
        "dpo",
        lambda a: base(a, "implicit_bad"),
        ("implicit.jsonl', line 3:", "`chosen` and `rejected` share no start"),
    ),
    "replay-on-text-rows": Case(
        "sft",
        lambda a: base(a, "text_rows") + ["--replay_share", "0.2"],
        ("`replay_share` adds conversations", "language modeling text"),
    ),
    "no-chat-template": Case("sft", lambda a: base(a, model="no_template"), ("no chat template",)),
    "template-without-generation-markers": Case(
        "sft", with_flags(model="plain_template", assistant_only_loss=True), ("{% generation %}",)
    ),
    "fp16-without-gpu": Case("sft", with_flags(fp16=True), ("fp16", "no GPU")),
    "unknown-rotation-switch": Case(
        "sft",
        with_flags(),
        ("GOFT_ROTATION_KERNEL='cuda' is not one of auto, triton, torch",),
        env=lambda a: {"GOFT_ROTATION_KERNEL": "cuda"},
    ),
    "forced-kernels-without-gpu": Case(
        "sft",
        with_flags(),
        ("GOFT_ROTATION_KERNEL=triton, but the kernels need a CUDA device",),
        env=lambda a: {"GOFT_ROTATION_KERNEL": "triton", "TRITON_INTERPRET": "0"},
    ),
    "4bit-without-working-bitsandbytes": Case(
        "sft",
        with_flags(load_in_4bit=True),
        ("working bitsandbytes", "cannot open shared object"),
        env=lambda a: {"PYTHONPATH": f"{a['broken_bnb']}{os.pathsep}{REPO}"},
    ),
    "adapter-on-wider-base": Case(
        "dpo",
        lambda a: base(a, "dpo", model="adapter_on_wide"),
        ("does not fit", "k_proj.givens_angles: [47] in the adapter, [63] for this base"),
    ),
    "adapter-on-other-architecture": Case(
        "dpo", lambda a: base(a, "dpo", model="adapter_on_gpt2"), ("does not fit", "(gpt2)", "c_attn")
    ),
    "adapter-not-safetensors": Case(
        "dpo",
        lambda a: base(a, "dpo", model="adapter_bin"),
        ("adapter_model.safetensors", "['adapter_model.bin']", "only from safetensors"),
    ),
    "custom-code-not-trusted": Case("sft", lambda a: base(a, model="custom"), ("trust_remote_code", "own Python code")),
    "resume-from-missing-checkpoint": Case(
        "sft",
        lambda a: base(a) + ["--resume_from_checkpoint", str(a.root / "no-checkpoint")],
        ("resume_from_checkpoint", "is not a folder"),
    ),
    "push-without-repo-id": Case("sft", with_flags(push_to_hub=True), ("hub_model_id",)),
    "push-without-token": Case(
        "sft",
        with_flags(push_to_hub=True, hub_model_id="me/x"),
        ("no Hub token", "hf auth login"),
    ),
    "token-on-command-line": Case(
        "sft", with_flags(hub_token=FAKE_TOKEN), ("Do not pass `--hub_token` on the command line",)
    ),
}

RECORD_CASES = {
    "sft-row-empty-messages": Case(
        "sft",
        lambda a: base(a, "sft_empty_messages"),
        ("sft-empty-messages.jsonl', line 6:", "`messages` is an empty list"),
    ),
    "sft-row-null-content": Case(
        "sft",
        lambda a: base(a, "sft_null_content"),
        ("sft-null-content.jsonl', line 4:", "(user) has `content` null", "as a string"),
    ),
    "sft-row-unknown-role": Case(
        "sft",
        lambda a: base(a, "sft_unknown_role"),
        ("sft-unknown-role.jsonl', line 3:", "the role 'human'", "use 'user'"),
    ),
    "sft-row-no-assistant-turn": Case(
        "sft",
        lambda a: base(a, "sft_no_assistant"),
        ("sft-no-assistant.jsonl', line 5:", "no assistant turn with text"),
    ),
    "dataset-not-utf8": Case(
        "sft",
        lambda a: base(a, "sft_latin1"),
        ("sft-latin1.jsonl' is not UTF-8", "0xe9 at line 3", "byte offset", "Re-encode"),
    ),
    "dataset-one-row": Case(
        "sft", lambda a: base(a, "sft_one_row"), ("has 1 row in split 'train'", "`dataset_test_size` 0.1", "add rows")
    ),
    "dataset-test-size-leaves-no-train-rows": Case(
        "sft", with_flags(dataset_test_size=0.95), ("has 8 rows", "holds out 8", "at most 0.87")
    ),
    "dataset-missing-relative-folder": Case(
        "sft", with_flags(dataset_name="./no-such-data/"), ("'./no-such-data/' does not exist",)
    ),
    "dpo-row-chosen-equals-rejected": Case(
        "dpo",
        lambda a: base(a, "dpo_identical"),
        ("dpo-identical.jsonl', line 5:", "`chosen` and `rejected` are identical"),
    ),
    "dpo-row-empty-chosen": Case(
        "dpo", lambda a: base(a, "dpo_empty_chosen"), ("dpo-empty-chosen.jsonl', line 2:", "reply in `chosen` is empty")
    ),
    "dpo-row-empty-chosen-string": Case(
        "dpo",
        lambda a: base(a, "dpo_empty_chosen_text"),
        ("dpo-empty-chosen-text.jsonl', line 7:", "`chosen` is an empty string"),
    ),
    "dpo-row-mixed-types": Case(
        "dpo",
        lambda a: base(a, "dpo_mixed_types"),
        ("dpo-mixed-types.jsonl', line 4:", "holds plain strings", "7 other records hold conversations"),
    ),
}
CASES.update(RECORD_CASES)


def _recipe(a: Assets, name: str, text: str) -> list[str]:
    """`--config` of a YAML recipe `name` holding `text` (written as is: a repeated key stays repeated)."""
    path = a.root / name
    path.write_text(text)
    return ["--config", str(path)]


ARGUMENT_CASES = {
    "batch-size-zero": Case(
        "sft",
        with_flags(per_device_train_batch_size=0),
        ("`per_device_train_batch_size` is 0", "a whole number >= 1"),
    ),
    "gradient-accumulation-zero": Case(
        "sft",
        with_flags(gradient_accumulation_steps=0),
        ("`gradient_accumulation_steps` is 0", "a whole number >= 1"),
    ),
    "negative-learning-rate-flag": Case(
        "sft", with_flags(learning_rate="-1e-3"), ("`learning_rate` is -0.001", "a finite number > 0")
    ),
    "negative-learning-rate-yaml": Case(
        "sft",
        lambda a: _recipe(a, "negative-lr.yaml", "learning_rate: -1e-3\n") + base(a),
        ("`learning_rate` is -0.001", "a finite number > 0"),
    ),
    "learning-rate-list-yaml": Case(
        "sft",
        lambda a: _recipe(a, "listed-lr.yaml", "learning_rate: [1.0e-3, 2.0e-3]\n") + base(a),
        ("`learning_rate` in the recipe file", "listed-lr.yaml", "(a list)", "takes a number"),
    ),
    "string-for-number-yaml": Case(
        "sft",
        lambda a: _recipe(a, "string-bs.yaml", "per_device_train_batch_size: two\n") + base(a),
        ("`per_device_train_batch_size`", "'two' (a string)", "a whole number"),
    ),
    "repeated-yaml-key": Case(
        "sft",
        lambda a: _recipe(a, "repeated.yaml", "max_steps: 2\nlearning_rate: 1.0e-3\nmax_steps: 4\n") + base(a),
        ("'max_steps' is given twice", "repeated.yaml", "on line 1 and on line 3"),
    ),
    "max-steps-zero": Case("sft", with_flags(max_steps=0), ("`max_steps` is 0: the run would train nothing",)),
    "zero-epochs": Case(
        "sft",
        with_flags(num_train_epochs=0),
        ("`num_train_epochs` is 0.0: the run would train nothing",),
    ),
    "negative-seed": Case("sft", with_flags(seed=-1), ("`seed` is -1", "[0, 4294967296)")),
    "dpo-beta-zero": Case("dpo", with_flags(data="dpo", beta=0), ("`beta` is 0.0", "> 0")),
    "lm-head-target": Case(
        "sft",
        with_flags(adapter_target_modules="lm_head"),
        ("'lm_head'", "output layer", "q_proj 48→48 (×2)"),
    ),
    "embed-tokens-target": Case(
        "sft",
        with_flags(adapter_target_modules="embed_tokens"),
        ("'model.embed_tokens'", "embedding", "linear layers only"),
    ),
    "chat-template-missing": Case(
        "sft",
        lambda a: base(a) + ["--chat_template_path", str(a.root / "nope" / "t.jinja")],
        ("`chat_template_path`", "t.jinja", "is not a file"),
    ),
    "deepspeed-config-is-a-folder": Case(
        "sft", lambda a: base(a) + ["--deepspeed", str(a.root)], ("`deepspeed`", "is a folder")
    ),
    "report-to-unknown-integration": Case(
        "sft",
        with_flags(report_to="nonsense"),
        ("`report_to` 'nonsense' is not a logging integration", "tensorboard"),
    ),
    "attention-unknown": Case("sft", with_flags(attn_implementation="nope"), ("`attn_implementation` 'nope'", "sdpa")),
    "argparse-type-error": Case(
        "sft",
        with_flags(per_device_train_batch_size="two"),
        ("`--per_device_train_batch_size`: invalid int value: 'two'",),
    ),
}
CASES.update(ARGUMENT_CASES)


def _mixture(a: Assets, name: str, members: list[dict], **keys) -> list[str]:
    """The arguments of a run whose data is a `dataset_mixture` of `members` (an asset's key stands for its path),
    given in the YAML recipe `name`."""
    members = [{**m, "id": a[m["id"]]} if m.get("id") in a.paths else m for m in members]
    text = yaml.safe_dump({"dataset_mixture": {"datasets": members, **keys}})
    return _recipe(a, name, text) + recipe_flags(model_name_or_path=a["model"], report_to="none")


def _trl_datasets(a: Assets, name: str, datasets: list[dict], **keys) -> list[str]:
    """The arguments of a run whose data is TRL's `datasets:` list (with more top-level `keys`), given in the YAML
    recipe `name`."""
    return _recipe(a, name, yaml.safe_dump({"datasets": datasets, **keys})) + recipe_flags(
        model_name_or_path=a["model"]
    )


MIXTURE_CASES = {  # each dataset of a mixture is checked like `dataset_name`, and named
    "mixture-weight-above-one": Case(
        "sft",
        lambda a: _mixture(a, "mix-weight.yaml", [{"id": "sft", "weight": 1.5}]),
        ("`dataset_mixture.datasets[0]`", "`weight` is 1.5", "(0, 1]"),
    ),
    "mixture-member-key-of-trl": Case(
        "sft",
        lambda a: _mixture(a, "mix-key.yaml", [{"path": a["sft"]}]),
        ("`dataset_mixture.datasets[0]` has the unknown key 'path'", "did you mean `id`?"),
    ),
    "mixture-member-bad-record": Case(
        "sft",
        lambda a: _mixture(a, "mix-record.yaml", [{"id": "sft"}, {"id": "sft_unknown_role"}]),
        ("`dataset_mixture.datasets[1]`", "sft-unknown-role.jsonl', line 3:", "the role 'human'"),
    ),
    "mixture-member-missing": Case(
        "sft",
        lambda a: _mixture(a, "mix-missing.yaml", [{"id": "sft"}, {"id": "./no-such.jsonl"}]),
        ("`dataset_mixture.datasets[1]` ('./no-such.jsonl')", "does not exist"),
    ),
    "mixture-columns-leave-out-the-stages": Case(
        "dpo",
        lambda a: _mixture(a, "mix-columns.yaml", [{"id": "dpo", "columns": ["prompt"]}]),
        ("`dataset_mixture.datasets[0]`", "leaves out the column(s) ['chosen', 'rejected']"),
    ),
    "mixture-and-dataset-name": Case(
        "sft",
        lambda a: _mixture(a, "mix-both.yaml", [{"id": "sft"}]) + ["--dataset_name", a["sft"]],
        ("Both `dataset_name` and `dataset_mixture`",),
    ),
    # TRL's own `datasets:` list goes through the same checks
    "mixture-trl-streaming": Case(
        "sft",
        lambda a: _trl_datasets(a, "trl-stream.yaml", [{"path": "json", "data_files": a["sft"]}], streaming=True),
        ("`streaming: true` is not supported", "checks every record"),
    ),
    "mixture-trl-member-bad-record": Case(
        "sft",
        lambda a: _trl_datasets(
            a,
            "trl-record.yaml",
            [{"path": "json", "data_files": a["sft"]}, {"path": "json", "data_files": a["sft_unknown_role"]}],
        ),
        ("`datasets[1]` ('json')", "sft-unknown-role.jsonl', line 3:"),
    ),
    "mixture-trl-fraction-on-some": Case(
        "sft",
        lambda a: _trl_datasets(
            a,
            "trl-fraction.yaml",
            [{"path": "json", "data_files": a["sft"], "fraction": 0.5}, {"path": "json", "data_files": a["sft"]}],
        ),
        ("`fraction` must be set for every dataset of `datasets`",),
    ),
    "mixture-trl-path-is-a-file": Case(
        "sft",
        lambda a: _trl_datasets(a, "trl-file.yaml", [{"path": a["sft"]}]),
        ("`datasets[0]`", "not a file: write `path: json` and `data_files:"),
    ),
    "mixture-trl-and-dataset-name": Case(
        "sft",
        lambda a: (
            _recipe(a, "trl-both.yaml", yaml.safe_dump({"datasets": [{"path": "json", "data_files": a["sft"]}]}))
            + base(a)
        ),
        ("Both `dataset_name` and `datasets` are given", "exactly one of"),
    ),
}
CASES.update(MIXTURE_CASES)

LIBRARY_ERROR_CASES = {  # what a library finds in the input is one line too, whichever library it is
    "adapter-weights-truncated": Case(
        "dpo",
        lambda a: base(a, "dpo", model="adapter_truncated"),
        ("adapter_model.safetensors is truncated or damaged",),
    ),
    "adapter-type-unknown": Case(
        "merge",
        lambda a: ["--adapter_path", a["adapter_unknown_type"]],
        ("names the adapter type 'WOBBLE'", "neither peft nor goft knows"),
    ),
    "adapter-config-not-json": Case(
        "evaluate", lambda a: ["--adapters", a["adapter_not_json"]], ("adapter_config.json is not valid JSON", "line 1")
    ),
    "recipe-file-not-utf8": Case("sft", lambda a: ["--config", a["recipe_latin1"]] + base(a), ("recipe-latin1.yaml",)),
    "chat-template-does-not-render": Case(
        "sft",
        lambda a: base(a) + ["--chat_template_path", a["broken_template"]],
        ("broken.jinja", "fails on a plain user/assistant conversation"),
    ),
    "comparison-recipe-repeated-key": Case(
        "compare",
        lambda a: ["--config", a["comparison_of_repeated"]],
        ("'max_steps' is given twice", "repeated-recipe.yaml"),
    ),
    "hub-dataset-offline": Case(
        "sft",
        with_flags(dataset_name="someone/no-such-dataset"),
        ("Cannot load the dataset 'someone/no-such-dataset'", "offline"),
    ),
}
CASES.update(LIBRARY_ERROR_CASES)

OUTPUT_CASES = {  # nothing a user made is written into, moved or lost
    "output-is-the-model-folder": Case(
        "sft", lambda a: base(a), ("is the model folder",), output=lambda a: a.paths["model"]
    ),
    "output-inside-the-dataset-folder": Case(
        "sft",
        lambda a: base(a, "data_folder"),
        ("lies inside the dataset",),
        output=lambda a: a.paths["data_folder"] / "run",
    ),
    "output-contains-the-recipe-file": Case(
        "sft",
        lambda a: ["--config", a["recipe_in_folder"]] + base(a),
        ("contains the recipe file",),
        output=lambda a: a.paths["recipe_in_folder"].parent,
    ),
    "output-is-a-file": Case(
        "sft", lambda a: base(a), ("is a file, not a folder",), output=lambda a: a.paths["a_file"]
    ),
    "dpo-output-is-its-sft-adapter": Case(
        "dpo",
        lambda a: base(a, "dpo", model="adapter"),
        ("is the adapter folder it continues",),
        output=lambda a: a.paths["adapter"],
    ),
    "merge-into-its-adapter-folder": Case(
        "merge",
        lambda a: ["--adapter_path", a["adapter"], "--overwrite_output_dir", "true"],
        ("lies inside the adapter folder",),
        output=lambda a: a.paths["adapter"] / "merged",
    ),
    "compare-into-its-recipe-folder": Case(
        "compare",
        lambda a: ["--config", a["comparison"]],
        ("contains the recipe", "sft.yaml"),
        output=lambda a: a.paths["comparison"].parent,
    ),
    "evaluate-into-an-adapter-folder": Case(
        "evaluate",
        lambda a: ["--adapters", a["adapter"]],
        ("is the adapter folder",),
        output=lambda a: a.paths["adapter"],
    ),
}
CASES.update(OUTPUT_CASES)

RESUME_CASES = {  # a rerun never resumes or evaluates with other settings or data without saying so
    "resume-with-another-learning-rate": Case(
        "sft",
        lambda a: base(a),
        ("learning_rate: 0.5 in the checkpoint, 2e-05 now", "--resume_with_changes true", "from step 2"),
        output=lambda a: a.paths["run_other_lr"],
    ),
    "resume-with-other-data": Case(
        "sft",
        lambda a: base(a),
        ("data (train split): 'sha256 000000000000…' in the checkpoint",),
        output=lambda a: a.paths["run_other_data"],
    ),
    "resume-changing-the-adapter": Case(
        "sft",
        with_flags(adapter="lora", resume_with_changes=True),
        ("Cannot resume from", "adapter: 'givens' in the checkpoint, 'lora' now"),
        output=lambda a: a.paths["run_other_lr"],
    ),
    "resume-and-overwrite-together": Case(
        "sft",
        lambda a: (
            base(a)
            + recipe_flags(overwrite_output_dir=True, resume_from_checkpoint=a.paths["run_other_lr"] / "checkpoint-2")
        ),
        ("starts afresh", "give one of them"),
    ),
    "resume-from-a-folder-that-is-no-checkpoint": Case(
        "sft",
        lambda a: base(a) + ["--resume_from_checkpoint", a["run_not_a_checkpoint"]],
        ("is not a training checkpoint", "trainer_state.json"),
    ),
    "evaluate-data-changed-since-training": Case(
        "evaluate", lambda a: ["--adapters", a["finished_run"]], ("changed since it was trained", "trained-on.jsonl")
    ),
}
CASES.update(RESUME_CASES)


def run_refused(
    stage: str,
    args: list[str],
    output_dir: Path,
    env: dict | None = None,
    hf_home: Path | None = None,
    forked: ForkedRuns | None = None,
) -> str:
    """Run a recipe that must be refused; returns its error line after checking how it failed. HF_HOME is a fresh
    folder (default: beside `output_dir`), so no login token of this machine is found. With `forked`, the run is a
    process forked from its worker (see `forked_runs`; not for an `env` that libraries read at import)."""
    hf_home = hf_home or output_dir.parent / "hf-home"
    command = [REPO / "recipes" / f"{stage}.py", *args, "--output_dir", str(output_dir)]
    run_env = {**recipe_env(), "HF_HOME": str(hf_home), **(env or {})}
    if forked is not None:
        assert not env, "a forked run keeps the worker's import-time environment"
        result = forked.run(command[0], command[1:], run_env)
    else:
        result = subprocess.run(
            [sys.executable, *map(str, command)], cwd=REPO, env=run_env, capture_output=True, text=True, timeout=300
        )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "Loading weights" not in result.stderr  # refused before any model was loaded
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    return last


@pytest.fixture(scope="module")
def forked(tmp_path_factory):
    """One worker for the module's refused runs; its HF_HOME is empty, so it finds no login token."""
    scratch = tmp_path_factory.mktemp("forked")
    with ForkedRuns({**recipe_env(), "HF_HOME": str(scratch / "hf-home")}, REPO, scratch / "runs") as runs:
        yield runs


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_before_any_work(assets, forked, tmp_path, name):
    if name in ("fp16-without-gpu", "forced-kernels-without-gpu") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    case = CASES[name]
    output_dir = case.output(assets) if case.output else tmp_path / "out"
    existed = output_dir.exists()
    args = case.args(assets)
    users_files = _snapshot(assets.root)
    env = case.env(assets)
    message = run_refused(
        case.stage, args, output_dir, env, hf_home=tmp_path / "hf-home", forked=None if env else forked
    )
    for expected in case.expected:
        assert expected in message, message
    assert FAKE_TOKEN not in message
    assert output_dir.exists() == existed  # nothing was written, not even an empty folder
    assert _snapshot(assets.root) == users_files  # every file the user had is byte-identical
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
    from tests.support.hub_server import LocalHub

    output_dir = tmp_path / "out"
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({"hub_token": FAKE_TOKEN, "push_to_hub": True, "hub_model_id": "me/adapter"}))
    with LocalHub(tmp_path / "hub", rejected_tokens=(FAKE_TOKEN,)) as hub:
        env = {
            "HF_ENDPOINT": hub.url,
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        message = run_refused("sft", ["--config", str(config)] + base(assets), output_dir, env)
    assert "rejected the token" in message and FAKE_TOKEN not in message
    assert any(path.startswith("/api/whoami") for _, path, _ in hub.requests)
    assert not any(path.startswith("/api/repos/create") for _, path, _ in hub.requests)
    assert not output_dir.exists()


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_help_fits_one_screen_and_points_to_every_key(forked, stage):
    """`--help` of a training recipe: goft's and the common keys, one screen of 120 columns; `--help_all`: every key.
    The other entry points keep argparse's help, which is short."""
    short = forked.run(REPO / "recipes" / f"{stage}.py", ["--help"])
    assert short.returncode == 0, short.stderr[-2000:]
    lines = short.stdout.rstrip().splitlines()
    assert len(lines) <= 60 and max(map(len, lines)) <= 120, short.stdout
    for key in ("--model_name_or_path", "--adapter", "--learning_rate", "--resume_with_changes", "--anchor_weight"):
        assert key in short.stdout
    assert "--help_all" in lines[-2] and "--lr_scheduler_kwargs" not in short.stdout
    full = forked.run(REPO / "recipes" / f"{stage}.py", ["--help_all"])
    assert full.returncode == 0 and "--lr_scheduler_kwargs" in full.stdout and len(full.stdout.splitlines()) > 200


@pytest.mark.parametrize("script", ["merge", "evaluate", "compare"])
def test_the_other_entry_points_help(forked, script):
    result = forked.run(REPO / "recipes" / f"{script}.py", ["--help"])
    assert result.returncode == 0 and "--output_dir" in result.stdout, result.stderr[-2000:]
