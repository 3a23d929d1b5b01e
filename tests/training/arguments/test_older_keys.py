"""Keys as real recipes spell them (alignment-handbook's recipes, TRL's example command lines): an older spelling is
read as today's with one line naming it, a handbook key is honoured, TRL's `use_peft` means LoRA, and what cannot keep
its meaning — or would be accepted without effect — is refused with one line before any work."""

import pytest
import yaml
from trl import DPOConfig, SFTConfig

from goft.errors import RecipeError
from goft.training.arguments import idle_keys, older_keys
from goft.training.arguments.cli import make_recipe_parser, parse_recipe
from tests.support.data import dpo_rows, sft_rows, write_jsonl
from tests.support.recipes import recipe_script

# (older key, value as a recipe file gives it, today's key, the parsed value, the training config)
RENAMED_CASES = [
    ("torch_dtype", "bfloat16", "dtype", "bfloat16", SFTConfig),
    ("max_seq_length", 256, "max_length", 256, SFTConfig),
    ("evaluation_strategy", "steps", "eval_strategy", "steps", SFTConfig),
    ("warmup_ratio", 0.1, "warmup_steps", 0.1, DPOConfig),
    ("preprocessing_num_workers", 2, "dataset_num_proc", 2, SFTConfig),
    ("hub_model_revision", "v1", "hub_revision", "v1", DPOConfig),
    ("push_to_hub_model_id", "me/adapter", "hub_model_id", "me/adapter", SFTConfig),
]


def parsed_value(parsed, key):
    return next(getattr(part, key) for part in parsed[:5] if hasattr(part, key))


def write_recipe(path, **keys):
    path.write_text(yaml.safe_dump({"output_dir": str(path.parent / "out"), **keys}))
    return str(path)


def test_every_renamed_key_has_a_case():
    assert {case[0] for case in RENAMED_CASES} == set(older_keys.RENAMED)


@pytest.mark.parametrize("old, value, new, expected, config", RENAMED_CASES, ids=[c[0] for c in RENAMED_CASES])
@pytest.mark.parametrize("where", ["file", "flag"])
def test_a_renamed_key_is_read_as_today_s_with_one_line(tmp_path, capsys, old, value, new, expected, config, where):
    if where == "file":
        argv = ["--config", write_recipe(tmp_path / "r.yaml", **{old: value})]
    else:
        argv = ["--output_dir", str(tmp_path / "out"), f"--{old}", str(value)]
    parsed = parse_recipe(make_recipe_parser(config), argv)
    assert parsed_value(parsed, new) == expected
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("goft: ")]
    assert len(lines) == 1 and f"`{old}`" in lines[0] and f"`{new}`" in lines[0], lines
    recipe_yaml = parsed[-1]
    assert yaml.safe_load(recipe_yaml)[new] == expected and old not in yaml.safe_load(recipe_yaml)
    comment = next(line for line in recipe_yaml.splitlines() if line.startswith("#"))
    assert f"`{old}`" in comment  # the card and the run record say how the key was given


def test_a_renamed_value_is_read_as_today_s(tmp_path, capsys):
    parsed = parse_recipe(
        make_recipe_parser(SFTConfig),
        ["--config", write_recipe(tmp_path / "r.yaml", packing=True, packing_strategy="ffd")],
    )
    assert parsed_value(parsed, "packing_strategy") == "bfd"
    assert "`packing_strategy: ffd` is read as `packing_strategy: bfd`" in capsys.readouterr().err


@pytest.mark.parametrize(
    "keys, flags",
    [
        ({"use_peft": True, "lora_r": 32, "lora_alpha": 16}, []),
        ({}, ["--use_peft", "--lora_r", "32", "--lora_alpha", "16"]),
        ({}, ["--use_peft=true", "--lora_r=32", "--lora_alpha=16"]),
    ],
    ids=["recipe file", "TRL command line", "flags with values"],
)
def test_use_peft_means_trl_s_lora(tmp_path, capsys, keys, flags):
    parsed = parse_recipe(
        make_recipe_parser(SFTConfig), ["--config", write_recipe(tmp_path / "r.yaml", **keys), *flags]
    )
    assert parsed_value(parsed, "adapter") == "lora" and parsed_value(parsed, "lora_r") == 32
    assert capsys.readouterr().err.count("`use_peft` is read as `adapter: lora`") == 1


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"use_peft": False}, "goft trains adapters only"),
        ({"use_peft": True, "adapter": "givens"}, "`adapter: givens` is given too"),
        ({"torch_dtype": "float32", "dtype": "float32"}, "Both `torch_dtype` and `dtype`"),
        ({"model_init_kwargs": {"device_map": "auto"}}, "`model_init_kwargs.device_map` cannot be honoured"),
        ({"model_init_kwargs": ["dtype"]}, "must be a mapping"),
        ({"chat_template": " "}, "`chat_template` is empty"),
        ({"chat_template": "{{ x }}", "chat_template_path": "t.jinja"}, "Both `chat_template`"),
    ],
    ids=[
        "use_peft false",
        "use_peft with another adapter",
        "both spellings",
        "unknown loading option",
        "not a mapping",
        "empty template",
        "template twice",
    ],
)
def test_what_cannot_keep_its_meaning_is_refused_with_one_line(tmp_path, keys, message):
    sft = recipe_script("sft")
    argv = ["--config", write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tmp_path / "no-model"), **keys)]
    with pytest.raises(RecipeError) as refused:
        sft["main"](*parse_recipe(sft["make_parser"](), argv))
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_an_inline_template_that_does_not_render_is_refused_before_loading(assets, tmp_path):
    sft = recipe_script("sft")
    keys = dict(model_name_or_path=str(assets["model"]), dataset_name=str(assets["sft"]))
    argv = [
        "--config",
        write_recipe(tmp_path / "r.yaml", chat_template="{% for m in messages %}{{ m.content }", **keys),
    ]
    with pytest.raises(RecipeError, match="The chat template of the recipe's `chat_template` fails"):
        sft["main"](*parse_recipe(sft["make_parser"](), argv))


def test_model_init_kwargs_entries_become_the_loading_keys(tmp_path, capsys):
    entries = {"torch_dtype": "float32", "attn_implementation": "eager", "trust_remote_code": False, "revision": "main"}
    parsed = parse_recipe(
        make_recipe_parser(SFTConfig), ["--config", write_recipe(tmp_path / "r.yaml", model_init_kwargs=entries)]
    )
    assert parsed_value(parsed, "dtype") == "float32" and parsed_value(parsed, "attn_implementation") == "eager"
    assert parsed_value(parsed, "model_revision") == "main" and parsed_value(parsed, "model_init_kwargs") is None
    assert capsys.readouterr().err.count("`model_init_kwargs.") == 4


def test_model_init_kwargs_as_json_on_the_command_line(tmp_path):
    argv = ["--output_dir", str(tmp_path), "--model_init_kwargs", '{"torch_dtype": "bfloat16"}']
    assert parsed_value(parse_recipe(make_recipe_parser(DPOConfig), argv), "dtype") == "bfloat16"


def test_handbook_keys_are_honoured_with_a_line(tmp_path, capsys):
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    parsed = parse_recipe(
        make_recipe_parser(DPOConfig),
        ["--config", write_recipe(tmp_path / "r.yaml", chat_template=template, max_prompt_length=64)],
    )
    assert parsed_value(parsed, "chat_template") == template and parsed_value(parsed, "max_prompt_length") == 64
    err = capsys.readouterr().err
    assert err.count("`chat_template` (alignment-handbook's key)") == 1
    assert err.count("`max_prompt_length` (alignment-handbook's key)") == 1


def test_unknown_keys_stay_refused(tmp_path):
    with pytest.raises(RecipeError, match="Unknown recipe key.*'lora_rank'"):
        parse_recipe(make_recipe_parser(SFTConfig), ["--config", write_recipe(tmp_path / "r.yaml", lora_rank=8)])


def test_only_the_main_process_prints_the_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    parse_recipe(make_recipe_parser(SFTConfig), ["--config", write_recipe(tmp_path / "r.yaml", torch_dtype="float32")])
    assert "goft:" not in capsys.readouterr().err


# (keys the recipe sets, what it says is missing); each key is accepted alone but would not shape this run
IDLE_CASES = [
    ({"lora_r": 8}, "`adapter: lora`"),
    ({"use_dora": True}, "`adapter: lora`"),
    ({"adapter": "lora", "givens_quasi": True}, "`adapter: givens`"),
    ({"sorsa_r": 4}, "`adapter: sorsa`"),
    ({"hra_r": 4}, "`adapter: hra`"),
    ({"oft_block_size": 8}, "`adapter: oft`"),
    ({"boft_block_size": 8}, "`adapter: boft`"),
    ({"road_variant": "road_2"}, "`adapter: road`"),
    ({"givens_penalty_weight": 0.1}, "`givens_quasi: true`"),
    ({"bnb_4bit_quant_type": "fp4"}, "`load_in_4bit: true`"),
    ({"retention_questions": "q.jsonl"}, "`retention_eval: true`"),
    ({"general_text": "t.jsonl"}, "a `forgetting_budget`"),
    ({"measure_steps": 3}, "a `forgetting_budget` or a `task_target_nll`"),
    ({"replay_prompts": "p.jsonl"}, "`replay_share` or `anchor_weight`"),
    ({"anchor_batch_size": 2}, "an `anchor_weight`"),
    ({"max_prompt_length": 32}, "the DPO stage"),
]


def test_a_dpo_key_without_effect_is_refused():
    with pytest.raises(RecipeError, match="`ref_model_sync_steps` is set, but it takes effect only with `sync_ref"):
        idle_keys.refuse_idle_keys(["ref_model_sync_steps"], {"sync_ref_model": False}, "dpo")


def test_every_dependence_has_a_case():
    covered = {key for keys, _ in IDLE_CASES for key in keys} | {"ref_model_sync_steps"}
    assert all(any(key in covered for key in dependence.keys) for dependence in idle_keys.DEPENDENCES)


@pytest.mark.parametrize(
    "keys, needs", IDLE_CASES, ids=[next(iter(k)) if len(k) == 1 else "+".join(k) for k, _ in IDLE_CASES]
)
def test_a_key_without_effect_is_refused(tmp_path, keys, needs):
    sft = recipe_script("sft")
    data = write_jsonl(sft_rows(8), tmp_path / "sft.jsonl")
    argv = ["--config", write_recipe(tmp_path / "r.yaml", model_name_or_path="none", dataset_name=str(data), **keys)]
    with pytest.raises(RecipeError) as refused:
        sft["main"](*parse_recipe(sft["make_parser"](), argv))
    idle = [key for key in keys if key not in ("adapter",)][0]
    assert f"`{idle}` is set, but it takes effect only with {needs}" in str(refused.value)


def test_keys_with_their_effect_pass_the_check():
    values = {"adapter": "lora", "load_in_4bit": True, "anchor_weight": 1.0, "givens_quasi": False}
    idle_keys.refuse_idle_keys(["lora_r", "use_dora", "bnb_4bit_quant_type", "anchor_batch_size"], values, "sft")
    idle_keys.refuse_idle_keys(["max_prompt_length"], {}, "dpo")


def test_a_continued_adapter_refuses_keys_that_shape_a_new_one(tmp_path):
    with pytest.raises(RecipeError, match="`lora_r`, `adapter_target_modules` shape a new adapter"):
        idle_keys.refuse_new_adapter_keys(["lora_r", "adapter_target_modules", "learning_rate"], str(tmp_path))
    idle_keys.refuse_new_adapter_keys(["learning_rate", "beta"], str(tmp_path))


def test_dpo_rows_file_for_the_dpo_cases(tmp_path):
    # the DPO stage accepts `max_prompt_length` (the check passes it on to the trainer)
    dpo = recipe_script("dpo")
    data = write_jsonl(dpo_rows(8), tmp_path / "dpo.jsonl")
    argv = [
        "--config",
        write_recipe(
            tmp_path / "r.yaml", model_name_or_path=str(tmp_path / "none"), dataset_name=str(data), max_prompt_length=0
        ),
    ]
    with pytest.raises(RecipeError, match="`max_prompt_length` is 0"):
        dpo["main"](*parse_recipe(dpo["make_parser"](), argv))


def test_a_revision_of_a_local_model_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="`model_revision: it-SFT` picks a revision of a Hub repo"):
        idle_keys.refuse_local_revision("it-SFT", str(tmp_path))
    idle_keys.refuse_local_revision("main", str(tmp_path))
    idle_keys.refuse_local_revision("it-SFT", "owner/model")  # a Hub id: the revision is read
