"""alignment-handbook's recipes and TRL's example command lines, run unchanged but for their paths (and CPU-sized
overrides on the command line) on the embedded SmolLM2 and data generated in the shapes the recipes name. The recipes
in `tests/support/handbook_recipes/` are written afresh with every key the handbook's SFT and DPO recipes use
(zephyr-7b-beta full and QLoRA, SmolLM2, SmolLM3); `@DATA@` and `@OUT@` are filled in here."""

import json
from pathlib import Path

import pytest
import yaml

from tests.support.hub_datasets import imdb_like, smoltalk2_like, ultrachat_like, ultrafeedback_like
from tests.support.hub_server import LocalHub
from tests.support.recipes import check_ok, launch, recipe_env, run_script

HERE = Path(__file__).parents[1] / "support" / "handbook_recipes"
MODEL = "smollm2-135m-instruct"
# what a 2-core CPU needs instead of a GPU node: one short step, no flash attention, bf16, liger or W&B
CPU_SIZED = [
    "--max_steps", "1",
    "--bf16", "false",
    "--attn_implementation", "sdpa",
    "--report_to", "none",
    "--per_device_train_batch_size", "2",
    "--per_device_eval_batch_size", "2",
    "--gradient_accumulation_steps", "1",
    "--max_length", "96",
    "--dataset_num_proc", "1",
]  # fmt: skip
NO_PUSH = ["--push_to_hub", "false"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub-shaped")
    ultrachat_like(root)
    ultrafeedback_like(root)
    smoltalk2_like(root)
    imdb_like(root)
    return root


def filled_recipe(name: str, data: Path, output_dir: Path) -> Path:
    text = (HERE / name).read_text().replace("@DATA@", str(data)).replace("@OUT@", str(output_dir))
    path = output_dir.parent / f"{output_dir.name}.yaml"
    path.write_text(text)
    return path


def migration_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("goft: ")]


@pytest.fixture(scope="module")
def base():
    """The embedded model, loaded once; each adapter is loaded onto it and unloaded again."""
    from goft.io.model_source import load_causal_lm, resolve_model_source

    return load_causal_lm(resolve_model_source(MODEL), dtype="float32")


def assert_saved_and_loadable(output_dir: Path, base) -> dict:
    """The adapter was saved and loads on its base; returns the run record."""
    from peft import PeftModel

    assert (output_dir / "adapter_model.safetensors").is_file()
    model = PeftModel.from_pretrained(base, str(output_dir))
    assert model.active_adapters == ["default"]
    model.unload()  # the base, as it was, for the next adapter
    return json.loads((output_dir / "goft_run.json").read_text())


# (recipe, stage, overrides beyond CPU_SIZED, keys read in an older spelling or honoured: each prints one line)
RUNS = [
    ("sft_qlora.yaml", "sft", NO_PUSH, ["torch_dtype", "use_peft", "chat_template", "max_seq_length", "warmup_ratio"]),
    (
        "sft_smollm3.yaml",
        "sft",
        [*NO_PUSH, "--use_liger_kernel", "false"],
        ["torch_dtype", "chat_template", "packing_strategy: ffd", "warmup_ratio"],
    ),
    ("dpo_full.yaml", "dpo", NO_PUSH, ["torch_dtype", "max_prompt_length", "warmup_ratio"]),
    (
        "dpo_mixer.yaml",
        "dpo",
        [*NO_PUSH, "--optim", "adamw_torch"],
        ["torch_dtype", "dataset_mixer", "dataset_splits", "preprocessing_num_workers", "evaluation_strategy"],
    ),
    ("dpo_apo.yaml", "dpo", [*NO_PUSH, "--use_liger_kernel", "false"], ["torch_dtype", "warmup_ratio"]),
    ("trl_example_config.yaml", "sft", ["--output_dir", "@OUT@"], []),
]


@pytest.mark.slow
@pytest.mark.parametrize("recipe, stage, overrides, mapped", RUNS, ids=[run[0] for run in RUNS])
def test_a_handbook_recipe_runs_unchanged_but_for_paths(data, base, tmp_path, recipe, stage, overrides, mapped):
    output_dir = tmp_path / "run"
    config = filled_recipe(recipe, data, output_dir)
    overrides = [str(output_dir) if flag == "@OUT@" else flag for flag in overrides]  # TRL's CLI names it so
    result = launch(f"{stage}.py", ["--config", str(config), *CPU_SIZED, *overrides], env=recipe_env())
    check_ok(result)
    lines = migration_lines(result.stderr)
    for key in mapped:
        assert sum(f"`{key}`" in line for line in lines) == 1, (key, lines)
    record = assert_saved_and_loadable(output_dir, base)
    for key in mapped:  # the card and the record show today's key, with how it was given
        assert f"`{key}`" in record["recipe"] and f"`{key}`" in (output_dir / "README.md").read_text()
    assert yaml.safe_load(record["recipe"])  # still a recipe that runs


@pytest.mark.slow
def test_the_full_sft_recipe_pushes_every_save_to_a_hub(data, base, tmp_path):
    """zephyr's full SFT recipe as written, push and `hub_strategy: every_save` included, against a local Hub."""
    output_dir = tmp_path / "run"
    config = filled_recipe("sft_full.yaml", data, output_dir)
    with LocalHub(tmp_path / "hub") as hub:
        env = {**recipe_env(), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_FakeTokenForTests123456"}
        env["HF_HOME"] = str(tmp_path / "hf-home")
        result = launch(
            "sft.py", ["--config", str(config), *CPU_SIZED, "--max_steps", "2", "--save_steps", "1"], env=env
        )
        check_ok(result)
        files = hub.files("someuser/smollm2-sft-full")
        commits = [request for request in hub.requests if "/commit/" in request[1]]
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= set(files)
    assert len(commits) == 3  # the adapter at steps 1 and 2, then the finished run
    assert_saved_and_loadable(output_dir, base)


@pytest.mark.slow
def test_trl_s_sft_command_line_with_use_peft(tmp_path):
    """TRL's documented `sft.py` command line with LoRA, on local data."""
    from tests.support.data import sft_rows, write_jsonl

    data = write_jsonl(sft_rows(16), tmp_path / "capybara.jsonl")
    argv = [
        "--model_name_or_path", MODEL, "--dataset_name", str(data), "--learning_rate", "2.0e-4",
        "--num_train_epochs", "1", "--packing", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "8", "--eos_token", "<|im_end|>", "--eval_strategy", "steps",
        "--eval_steps", "100", "--use_peft", "--lora_r", "32", "--lora_alpha", "16",
        "--output_dir", str(tmp_path / "Qwen2-0.5B-SFT"),
        "--max_steps", "1", "--max_length", "96", "--gradient_accumulation_steps", "1",  # CPU-sized
    ]  # fmt: skip
    result = launch("sft.py", argv, env=recipe_env())
    check_ok(result)
    assert migration_lines(result.stderr) == ["goft: `use_peft` is read as `adapter: lora` (TRL's LoRA, as in TRL)."]
    config = json.loads((tmp_path / "Qwen2-0.5B-SFT" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 32 and config["lora_alpha"] == 16


@pytest.mark.slow
def test_trl_s_dpo_command_line_with_use_peft_is_refused_in_one_line(tmp_path):
    """DPO trains only strict GOFT: TRL's LoRA command line is refused before loading, saying what to write."""
    from tests.support.data import dpo_rows, write_jsonl

    data = write_jsonl(dpo_rows(8), tmp_path / "prefs.jsonl")
    argv = [
        "--dataset_name", str(data), "--model_name_or_path", MODEL, "--learning_rate", "5.0e-6",
        "--output_dir", str(tmp_path / "out"), "--no_remove_unused_columns", "--use_peft", "--lora_r", "32",
        "--lora_alpha", "16",
    ]  # fmt: skip
    result = run_script("dpo.py", argv, env=recipe_env())
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "allow_non_orthogonal_alignment: true" in errors[0]
