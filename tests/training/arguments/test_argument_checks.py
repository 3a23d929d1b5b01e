"""Recipe arguments checked in-process, without a model: each range rule, the YAML recipe file's types and repeated
keys, negative numbers on the command line, argparse's errors as one `error:` line, and the one-screen `--help`."""

import json
import math

import pytest
import yaml
from peft import LoraConfig
from trl import DPOConfig, SFTConfig, TrlParser

from goft import GivensConfig
from goft.data.arguments import DataArguments
from goft.errors import RecipeError
from goft.io import adapter_checks
from goft.training.arguments import checks as argument_checks
from goft.training.arguments.cli import make_recipe_parser, parse_recipe, run_recipe
from goft.training.arguments.fields import AdapterArguments, ModelArguments, RetentionArguments
from goft.training.arguments.recipe_file import check_recipe_values, load_recipe_file
from tests.support.models import tiny_model
from tests.support.recipes import REPO, recipe_flags


def training_values(config_class=SFTConfig, tmp="/tmp/goft-unused", **changes) -> dict:
    """Every key of a default run (CPU, fp32), with `changes` applied."""
    training = config_class(output_dir=tmp, use_cpu=True, bf16=False)
    values = argument_checks.recipe_values(
        training, DataArguments(), ModelArguments(), AdapterArguments(), RetentionArguments()
    )
    return {**values, **changes}


# (key, a refused value, an accepted value, other keys the rule needs, the stage's config)
RANGE_CASES = [
    ("max_steps", 0, 10, {}, SFTConfig),
    ("max_steps", -2, -1, {}, SFTConfig),
    ("num_train_epochs", 0.0, 0.5, {"max_steps": -1}, SFTConfig),
    ("learning_rate", -1e-3, 1e-3, {}, SFTConfig),
    ("learning_rate", math.nan, 2e-5, {}, SFTConfig),
    ("learning_rate", [1e-3, 2e-3], 2e-5, {}, SFTConfig),
    ("per_device_train_batch_size", 0, 1, {}, SFTConfig),
    ("per_device_eval_batch_size", 0, 2, {}, SFTConfig),
    ("gradient_accumulation_steps", 0, 4, {}, SFTConfig),
    ("eval_accumulation_steps", 0, None, {}, SFTConfig),
    ("max_length", 0, None, {}, SFTConfig),
    ("weight_decay", -0.1, 0.0, {}, SFTConfig),
    ("max_grad_norm", -1.0, 0.0, {}, SFTConfig),
    ("adam_beta1", 1.0, 0.0, {}, SFTConfig),
    ("adam_beta2", -0.1, 0.99, {}, SFTConfig),
    ("adam_epsilon", 0.0, 1e-8, {}, SFTConfig),
    ("label_smoothing_factor", 1.0, 0.1, {}, SFTConfig),
    ("neftune_noise_alpha", -5.0, None, {}, SFTConfig),
    ("seed", -1, 0, {}, SFTConfig),
    ("seed", 2**32, 2**32 - 1, {}, SFTConfig),
    ("data_seed", -3, None, {}, SFTConfig),
    ("save_steps", 0, 0.5, {"save_strategy": "steps"}, SFTConfig),
    ("logging_steps", -1, 1, {"logging_strategy": "steps"}, SFTConfig),
    ("eval_steps", 0, None, {"eval_strategy": "steps"}, SFTConfig),
    ("dataloader_num_workers", -1, 0, {}, SFTConfig),
    ("dataset_num_proc", 0, None, {}, SFTConfig),
    ("max_prompt_length", 0, 512, {}, DPOConfig),
    ("task_eval_samples", -1, 0, {}, SFTConfig),
    ("beta", 0.0, 0.1, {}, DPOConfig),
    ("label_smoothing", 0.6, 0.5, {}, DPOConfig),
    ("precompute_ref_batch_size", 0, 4, {}, DPOConfig),
    ("ref_model_sync_steps", 0, 64, {"sync_ref_model": True}, DPOConfig),
    ("ref_model_mixup_alpha", 1.5, 1.0, {"sync_ref_model": True}, DPOConfig),
    ("hra_r", 0, 1, {"adapter": "hra"}, SFTConfig),
    ("hra_lambda", -1e-4, 0.0, {"adapter": "hra"}, SFTConfig),
    ("oft_block_size", 0, 16, {"adapter": "oft"}, SFTConfig),
    ("boft_block_size", -4, 4, {"adapter": "boft"}, SFTConfig),
    ("boft_n_butterfly_factor", 0, 2, {"adapter": "boft"}, SFTConfig),
    ("road_group_size", 3, 2, {"adapter": "road"}, SFTConfig),
    ("lora_r", 0, 1, {"adapter": "lora"}, SFTConfig),
    ("lora_alpha", 0, 0.5, {"adapter": "lora"}, SFTConfig),
    ("lora_dropout", 1.0, 0.0, {"adapter": "lora"}, SFTConfig),
]


@pytest.mark.parametrize(
    "key, bad, good, needs, config_class", RANGE_CASES, ids=[f"{case[0]}={case[1]!r}" for case in RANGE_CASES]
)
def test_each_range_rule_refuses_a_bad_value_and_accepts_a_good_one(key, bad, good, needs, config_class):
    with pytest.raises(RecipeError) as refused:
        argument_checks.check_ranges(training_values(config_class, **needs, **{key: bad}))
    message = str(refused.value)
    rule = next(rule for rule in argument_checks.RULES if rule.key == key)
    assert message.startswith(f"`{key}` is {bad!r}") and rule.bound.words in message and rule.fix in message
    argument_checks.check_ranges(training_values(config_class, **needs, **{key: good}))


def test_every_rule_has_a_case():
    assert {rule.key for rule in argument_checks.RULES} == {case[0] for case in RANGE_CASES}


@pytest.mark.parametrize("config_class", [SFTConfig, DPOConfig])
def test_the_defaults_pass(config_class):
    argument_checks.check_ranges(training_values(config_class))


@pytest.mark.parametrize(
    "key, value, needs",
    [("max_steps", 0, {}), ("num_train_epochs", 0.0, {"max_steps": -1}), ("learning_rate", 0.0, {})],
)
def test_a_run_that_would_train_nothing_is_refused(key, value, needs):
    with pytest.raises(RecipeError, match=f"`{key}` is {value!r}: the run would train nothing"):
        argument_checks.check_ranges(training_values(**needs, **{key: value}))


def test_a_negative_learning_rate_is_not_called_idle():
    with pytest.raises(RecipeError) as refused:
        argument_checks.check_ranges(training_values(learning_rate=-1e-3))
    assert "train nothing" not in str(refused.value) and "a finite number > 0" in str(refused.value)


@pytest.mark.parametrize(
    "values",
    [
        {"max_steps": 10, "num_train_epochs": 0.0},  # epochs are not used when max_steps is set
        {"adapter": "givens", "hra_r": 0, "lora_r": 0},  # other methods' keys are not used
        {"save_strategy": "no", "save_steps": 0},
        {"eval_strategy": "no", "eval_steps": 0},
    ],
)
def test_keys_the_run_does_not_use_are_not_refused(values):
    argument_checks.check_ranges(training_values(**values))


def test_check_training_arguments_reads_the_real_argument_objects(tmp_path):
    training = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=0)
    with pytest.raises(RecipeError, match="`per_device_train_batch_size` is 0"):
        argument_checks.check_training_arguments(
            DataArguments(), training, ModelArguments(), AdapterArguments(), RetentionArguments()
        )
    missing = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, chat_template_path="/nope/t.jinja")
    with pytest.raises(RecipeError, match="`chat_template_path` '/nope/t.jinja' is not a file"):
        argument_checks.check_training_arguments(
            DataArguments(), missing, ModelArguments(), AdapterArguments(), RetentionArguments()
        )


# ---- files keys name ----------------------------------------------------------------------------------------------


def test_chat_template_path(tmp_path, monkeypatch):
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    argument_checks.check_chat_template_path(str(template))
    argument_checks.check_chat_template_path(None)
    tokenizer_folder = tmp_path / "tokenizer"
    tokenizer_folder.mkdir()
    (tokenizer_folder / "tokenizer_config.json").write_text("{}")
    argument_checks.check_chat_template_path(str(tokenizer_folder))
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a template")
    refused = {
        str(tmp_path / "missing.jinja"): "is not a file",
        str(tmp_path / "empty"): "without tokenizer_config",
        str(tmp_path / "notes.txt"): "not a chat template",
        "./nope/folder": "does not exist",
    }
    for value, expected in refused.items():
        with pytest.raises(RecipeError, match=expected):
            argument_checks.check_chat_template_path(value)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(RecipeError, match="Hub is offline"):
        argument_checks.check_chat_template_path("some-owner/never-downloaded")


def test_deepspeed_config(tmp_path):
    good = tmp_path / "ds.json"
    good.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    for value in (None, {"zero_optimization": {"stage": 3}}, str(good)):
        argument_checks.check_deepspeed_config(value)
    (tmp_path / "bad.json").write_text("{bad")
    (tmp_path / "list.json").write_text("[1, 2]")
    refused = {
        str(tmp_path): "is a folder",
        str(tmp_path / "missing.json"): "does not exist",
        str(tmp_path / "bad.json"): "not valid JSON",
        str(tmp_path / "list.json"): "must hold a JSON object",
    }
    for value, expected in refused.items():
        with pytest.raises(RecipeError, match=expected):
            argument_checks.check_deepspeed_config(value)


# ---- the YAML recipe file -----------------------------------------------------------------------------------------


def write(tmp_path, text: str, name: str = "recipe.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_repeated_key_is_refused_with_both_lines(tmp_path):
    path = write(tmp_path, "max_steps: 2\nlearning_rate: 1.0e-3\nseed: 1\nlearning_rate: 2.0e-3\n")
    with pytest.raises(RecipeError) as refused:
        load_recipe_file(path)
    assert "'learning_rate' is given twice" in str(refused.value) and path in str(refused.value)
    assert "on line 2 and on line 4" in str(refused.value)


def test_a_repeated_key_in_a_nested_mapping_is_refused(tmp_path):
    path = write(tmp_path, "methods:\n  lora:\n    adapter: lora\n  lora:\n    adapter: givens\n")
    with pytest.raises(RecipeError, match="'lora' is given twice .* on line 2 and on line 4"):
        load_recipe_file(path)


def test_a_recipe_file_without_repeats_loads(tmp_path):
    assert load_recipe_file(write(tmp_path, "a: 1\nenv:\n  A: '1'\nb: [1, 2]\n")) == {
        "a": 1,
        "env": {"A": "1"},
        "b": [1, 2],
    }


@pytest.mark.parametrize(
    "text, expected", [("- a\n- b\n", "holds a list"), ("", "holds nothing"), ("a: [1\n", "not valid YAML")]
)
def test_a_recipe_file_that_is_not_a_mapping_is_refused(tmp_path, text, expected):
    with pytest.raises(RecipeError, match=expected):
        load_recipe_file(write(tmp_path, text))


def test_a_missing_recipe_file_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe_file(str(tmp_path / "nope.yaml"))


@pytest.fixture(scope="module")
def sft_parser():
    return make_recipe_parser(SFTConfig)


@pytest.mark.parametrize(
    "recipe, expected",
    [
        ({"learning_rate": [1e-3, 2e-3]}, ("`learning_rate`", "(a list)", "takes a number", "one value per key")),
        ({"learning_rate": "fast"}, ("`learning_rate`", "'fast' (a string)", "takes a number")),
        (
            {"per_device_train_batch_size": "two"},
            ("'two' (a string)", "a whole number", "per_device_train_batch_size: 8"),
        ),
        ({"max_steps": 10.5}, ("`max_steps`", "10.5 (a number)", "a whole number")),
        (
            {"adapter_target_modules": 3},
            ("`adapter_target_modules`", "3 (a whole number)", "a list of strings or null"),
        ),
        (
            {"givens_quasi": "maybe"},
            (
                "`givens_quasi`",
                "true or false",
            ),
        ),
        ({"output_dir": 2024}, ("`output_dir`", "a string", "Quote it", '`output_dir: "2024"`')),
        (
            {"eval_strategy": False},
            ("`eval_strategy`", "false (true/false)", "one of no, steps, epoch", '`eval_strategy: "no"`'),
        ),
        ({"adapter": "sorza"}, ("`adapter`", "'sorza'", "not one of its choices", "givens, sorsa")),
        ({"lr_scheduler_type": "cosin"}, ("`lr_scheduler_type`", "'cosin'", "constant_with_warmup")),
        ({"report_to": 1}, ("`report_to`",)),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_key_file_and_type(sft_parser, tmp_path, recipe, expected):
    path = str(tmp_path / "recipe.yaml")
    with pytest.raises(RecipeError) as refused:
        check_recipe_values(recipe, sft_parser, path)
    message = str(refused.value)
    assert path in message
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize(
    "recipe",
    [
        {"learning_rate": "1e-3"},  # YAML reads 1e-3 (no dot) as a string; it converts
        {"learning_rate": 1.0e-3, "num_train_epochs": 3, "max_steps": -1},
        {"adapter_target_modules": "all-linear"},
        {"adapter_target_modules": ["q_proj", "v_proj"]},
        {"max_length": None, "report_to": "none", "eval_strategy": "no", "givens_quasi": "true", "bf16": False},
        {"env": {"HF_HUB_OFFLINE": "1"}, "deepspeed": {"zero_optimization": {"stage": 2}}},
        {"adapter": "lora", "lora_alpha": 32, "lr_scheduler_kwargs": {"min_lr": 0.0}},
    ],
)
def test_values_of_the_right_type_pass(sft_parser, recipe):
    check_recipe_values(recipe, sft_parser, "recipe.yaml")


def test_parse_recipe_refuses_a_bad_recipe_file_before_parsing(sft_parser, tmp_path):
    repeated = write(tmp_path, "learning_rate: 1.0e-3\nlearning_rate: 2.0e-3\n", "repeated.yaml")
    with pytest.raises(RecipeError, match="given twice"):
        parse_recipe(make_recipe_parser(SFTConfig), ["--config", repeated, "--output_dir", str(tmp_path)])
    listed = write(tmp_path, "learning_rate: [1.0e-3, 2.0e-3]\n", "listed.yaml")
    with pytest.raises(RecipeError, match="`learning_rate` in the recipe file .*listed.yaml"):
        parse_recipe(make_recipe_parser(SFTConfig), ["--config", listed, "--output_dir", str(tmp_path)])


# ---- the command line ---------------------------------------------------------------------------------------------


def test_negative_numbers_on_the_command_line_are_values(tmp_path):
    _, training, *_ = parse_recipe(
        make_recipe_parser(SFTConfig),
        recipe_flags(
            output_dir=tmp_path, learning_rate="-1e-3", seed="-1", max_grad_norm="-.5", weight_decay="-2.5E-2"
        ),
    )
    assert (training.learning_rate, training.seed, training.max_grad_norm) == (-1e-3, -1, -0.5)
    assert training.weight_decay == -0.025
    with pytest.raises(RecipeError, match="`learning_rate` is -0.001, but it must be a finite number > 0"):
        argument_checks.check_ranges(argument_checks.recipe_values(training))


def test_a_negative_number_in_the_recipe_file_is_refused_by_its_range(tmp_path):
    path = write(tmp_path, "learning_rate: -1e-3\n")
    _, training, *_ = parse_recipe(make_recipe_parser(SFTConfig), ["--config", path, "--output_dir", str(tmp_path)])
    with pytest.raises(RecipeError, match="`learning_rate` is -0.001"):
        argument_checks.check_ranges(argument_checks.recipe_values(training))


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--per_device_train_batch_size", "two"], "`--per_device_train_batch_size`: invalid int value: 'two'"),
        (["--learning_rate"], "`--learning_rate`: expected one argument"),
        (["--adapter", "sorza"], "`--adapter`: invalid choice: 'sorza'"),
        (["--givens_quasi", "maybe"], "`--givens_quasi`"),
    ],
)
def test_argparse_errors_become_recipe_errors(tmp_path, argv, expected):
    with pytest.raises(RecipeError) as refused:
        parse_recipe(make_recipe_parser(SFTConfig), ["--output_dir", str(tmp_path), *argv])
    assert str(refused.value).startswith(expected) and "`--help`" in str(refused.value)


def test_a_plain_parser_of_a_small_recipe_also_raises(tmp_path):
    from dataclasses import dataclass, field

    @dataclass
    class Small:
        adapter_path: str = field(metadata={"help": "An adapter folder."})

    with pytest.raises(RecipeError, match="The following arguments are required: --adapter_path"):
        parse_recipe(TrlParser((Small,)), [])


def test_run_recipe_prints_one_error_line_without_usage(capsys, tmp_path):
    with pytest.raises(SystemExit) as exited:
        run_recipe(
            lambda: make_recipe_parser(SFTConfig),
            lambda *parsed: None,
            argv=["--output_dir", str(tmp_path), "--seed", "two"],
        )
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: `--seed`: invalid int value: 'two'")
    assert "usage:" not in err


# ---- --help -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config_class, stage_key, other_stage_key",
    [(SFTConfig, "--assistant_only_loss", "--beta"), (DPOConfig, "--beta", "--assistant_only_loss")],
)
def test_help_fits_one_screen_and_names_the_key_groups(config_class, stage_key, other_stage_key, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_recipe(make_recipe_parser(config_class), ["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert len(lines) <= 60 and max(len(line) for line in lines) <= 120
    for title in (
        "Model, data and output:",
        "Adapter:",
        "Training:",
        "Retention and forgetting:",
        "Logging and the Hub:",
    ):
        assert title in lines
    for key in (
        "--model_name_or_path",
        "--learning_rate",
        "--max_steps",
        "--per_device_train_batch_size",
        "--adapter",
        "--retention_eval",
        "--anchor_weight",
        "--push_to_hub",
        "--resume_from_checkpoint",
        stage_key,
    ):
        assert any(line.lstrip().startswith(key + " ") for line in lines), key
    assert other_stage_key + " " not in text
    assert "--help_all" in lines[-2] and "docs/recipes.md" in lines[-1]
    assert (REPO / "docs" / "recipes.md").is_file()
    assert "--lr_scheduler_kwargs" not in text  # the rarely used keys stay in --help_all


def test_help_shows_each_default(capsys):
    with pytest.raises(SystemExit):
        parse_recipe(make_recipe_parser(SFTConfig), ["--help"])
    line = next(line for line in capsys.readouterr().out.splitlines() if "--learning_rate " in line)
    assert line.split()[1] == "2e-05"


def test_help_all_lists_every_key(capsys):
    with pytest.raises(SystemExit) as exited:
        parse_recipe(make_recipe_parser(SFTConfig), ["--help_all"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "--lr_scheduler_kwargs" in text and "--givens_penalty_weight" in text and len(text.splitlines()) > 300


# ---- targets no adapter may take ----------------------------------------------------------------------------------


def meta_llama():
    return tiny_model(
        "llama",
        seed=None,
        device="meta",
        vocab_size=64,
        hidden_size=48,
        intermediate_size=80,
        max_position_embeddings=2048,
    )


def meta_gpt2():
    return tiny_model("gpt2", seed=None, device="meta", vocab_size=64, n_positions=1024)


def test_the_layer_listing_leaves_out_the_output_layer_and_embeddings():
    listing = adapter_checks.describe_linear_layers(meta_llama())
    assert "q_proj 48→48 (×2)" in listing and "down_proj 80→48 (×2)" in listing
    assert "lm_head" not in listing and "embed_tokens" not in listing
    gpt2 = adapter_checks.describe_linear_layers(meta_gpt2())
    assert "c_attn" in gpt2 and "lm_head" not in gpt2 and "wte" not in gpt2


@pytest.mark.parametrize(
    "make_model, config, method, expected",
    [
        (
            meta_llama,
            GivensConfig(task_type="CAUSAL_LM", target_modules=["lm_head"]),
            "givens",
            ("'lm_head'", "output layer", "never train"),
        ),
        (
            meta_llama,
            GivensConfig(task_type="CAUSAL_LM", target_modules=["q_proj", "embed_tokens"]),
            "givens",
            ("'model.embed_tokens'", "embedding", "linear layers only"),
        ),
        (meta_llama, GivensConfig(task_type="CAUSAL_LM", target_modules=".*"), "givens", ("'.*'", "embedding")),
        (
            meta_llama,
            LoraConfig(task_type="CAUSAL_LM", target_modules=["lm_head"]),
            "lora",
            ("`lora_target_modules`", "output layer"),
        ),
        (
            meta_gpt2,
            GivensConfig(task_type="CAUSAL_LM", target_modules=["wte"]),
            "givens",
            ("'transformer.wte'", "embedding"),
        ),
        (
            meta_gpt2,
            GivensConfig(task_type="CAUSAL_LM", target_modules=["c_attn", "lm_head"]),
            "givens",
            ("'lm_head'", "output layer"),
        ),
    ],
)
def test_output_layer_and_embedding_targets_are_refused(make_model, config, method, expected):
    with pytest.raises(RecipeError) as refused:
        adapter_checks.check_fresh_adapter(make_model(), config, "tiny", method)
    message = str(refused.value)
    for part in expected:
        assert part in message, message
    assert "q_proj" in message or "c_attn" in message  # the layers it can target are listed


@pytest.mark.parametrize(
    "config, method",
    [
        (GivensConfig(task_type="CAUSAL_LM", target_modules="all-linear"), "givens"),
        (GivensConfig(task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"]), "givens"),
        (
            LoraConfig(task_type="CAUSAL_LM", target_modules=["embed_tokens", "q_proj"]),
            "lora",
        ),  # LoRA adapts embeddings
    ],
)
def test_linear_targets_pass(config, method):
    adapter_checks.check_fresh_adapter(meta_llama(), config, "tiny", method)


def test_yaml_example_in_a_message_is_valid_yaml(sft_parser):
    with pytest.raises(RecipeError) as refused:
        check_recipe_values({"learning_rate": "fast"}, sft_parser, "r.yaml")
    example = str(refused.value).split("e.g. `", 1)[1].split("`", 1)[0]
    assert yaml.safe_load(example) == {"learning_rate": 2e-05}
