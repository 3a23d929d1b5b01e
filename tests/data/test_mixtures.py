"""Dataset mixtures (`dataset_mixture`, alignment-handbook's spelling): each member checked like `dataset_name` and
named in every refusal, its weight taking a seeded share of its rows, the mixed rows shuffled and split with the
seed; the recipe parser reads the YAML, the run records the mixture (goft_run.json, model card, run spec), and
evaluation rebuilds the same held-out split from the record."""

import json
import runpy
from pathlib import Path

import pytest
import yaml
from datasets import Dataset, DatasetDict

from goft.data import loading as data_module
from goft.data.arguments import DataArguments
from goft.data.loading import load_recipe_dataset
from goft.data.mixtures import member_locations, read_mixture
from goft.data.stages import DPO, SFT
from goft.data.trl_datasets import read_datasets
from goft.errors import RecipeError
from goft.evaluation.runner import held_out_split
from goft.io.outputs import FINISHED_MARKER
from goft.training.arguments.cli import parse_recipe, run_recipe
from goft.training.publish.model_card import describe_data
from goft.training.runs import checkpoints, run_spec
from tests.support.data import dpo_rows, write_jsonl
from tests.support.models import save_tiny_chat_model
from tests.support.recipes import REPO, run_flags

SFT_RECIPE = runpy.run_path(str(REPO / "recipes" / "sft.py"), run_name="sft_mixture_recipe")


def talk(tag: str, i: int, **extra) -> dict:
    """An SFT record that says which file and row it is."""
    return {"messages": [{"role": "user", "content": f"{tag} {i}?"}, {"role": "assistant", "content": "ok"}], **extra}


def rows_file(folder: Path, tag: str, n: int, **extra) -> Path:
    return write_jsonl([talk(tag, i, **extra) for i in range(n)], folder / f"{tag}.jsonl")


def mixed(members: list[dict], columns=SFT, run_seed: int = 0, **keys) -> DatasetDict:
    """The mixture's splits, as a recipe run with `run_seed` loads them; `keys`: the mixture's other keys."""
    return load_recipe_dataset(DataArguments(dataset_mixture={"datasets": members, **keys}), columns, seed=run_seed)


def refusal(members, columns=SFT, **keys) -> str:
    with pytest.raises(RecipeError) as refused:
        mixed(members, columns, **keys)
    return str(refused.value)


def assert_refused_before_loading(monkeypatch, refuse, members, keys: dict, expected) -> None:
    """`refuse(members, **keys)` refuses with a message that holds each text of `expected`, before loading any data."""
    monkeypatch.setattr(data_module, "load_dataset", lambda *a, **k: pytest.fail("loaded before the spec was checked"))
    message = refuse(members, **keys)
    for text in expected:
        assert text in message, message


def tags(dataset: DatasetDict) -> list[str]:
    """Each row's file and row ("a 3"), train then test, in order."""
    return [row["messages"][0]["content"] for split in ("train", "test") for row in dataset[split]]


pytestmark = pytest.mark.usefixtures("no_hub_datasets")  # a local member never reaches the Hub


# ---- what a mixture takes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rows, weight, taken", [(20, 0.5, 10), (100, 0.29, 29), (7, 1.0, 7), (15, 0.1, 1), (9, 1, 9), (10, 0.99, 9)]
)
def test_a_weight_takes_that_share_of_the_members_rows(tmp_path, rows, weight, taken):
    a, b = rows_file(tmp_path, "a", rows), rows_file(tmp_path, "b", 6)
    dataset = mixed([{"id": str(a), "weight": weight}, {"id": str(b)}], test_split_size=0.25)
    found = tags(dataset)
    assert sum(t.startswith("a ") for t in found) == taken and sum(t.startswith("b ") for t in found) == 6
    assert len(set(found)) == len(found)  # no row twice
    assert len(dataset["test"]) == -(-(taken + 6) // 4)  # ceil(0.25 * rows), as datasets holds out


def test_a_weight_without_a_key_takes_every_row_and_the_test_split_defaults_to_dataset_test_size(tmp_path):
    a, b = rows_file(tmp_path, "a", 12), rows_file(tmp_path, "b", 8)
    args = DataArguments(dataset_mixture={"datasets": [{"id": str(a)}, {"id": str(b)}]}, dataset_test_size=0.2)
    dataset = load_recipe_dataset(args, SFT, seed=0)
    assert [len(dataset["train"]), len(dataset["test"])] == [16, 4]


def test_the_same_seed_gives_the_same_rows_and_another_seed_other_rows(tmp_path):
    members = [{"id": str(rows_file(tmp_path, "a", 40)), "weight": 0.5}, {"id": str(rows_file(tmp_path, "b", 30))}]
    first, again, other = mixed(members, run_seed=1), mixed(members, run_seed=1), mixed(members, run_seed=2)
    assert tags(first) == tags(again)
    assert first["test"]["messages"] == again["test"]["messages"]
    picked = {t for t in tags(first) if t.startswith("a ")}
    assert picked != {t for t in tags(other) if t.startswith("a ")}  # another share of `a`
    assert tags(first)[:10] != tags(other)[:10]  # and another order


def test_the_mixtures_own_seed_wins_over_the_runs(tmp_path):
    members = [{"id": str(rows_file(tmp_path, "a", 40)), "weight": 0.5}, {"id": str(rows_file(tmp_path, "b", 30))}]
    assert tags(mixed(members, run_seed=9, seed=5)) == tags(mixed(members, run_seed=5))
    assert tags(mixed(members, run_seed=9, seed=5)) != tags(mixed(members, run_seed=9))


def test_members_are_shuffled_together(tmp_path):
    members = [{"id": str(rows_file(tmp_path, "a", 30))}, {"id": str(rows_file(tmp_path, "b", 30))}]
    train = [t[0] for t in tags(mixed(members))[:30]]
    assert 5 < train.count("a") < 25  # not `a`'s rows first, then `b`'s


def test_columns_keep_only_the_named_ones(tmp_path):
    a = rows_file(tmp_path, "a", 10, source="facts", score=1)
    b = rows_file(tmp_path, "b", 10)
    dataset = mixed([{"id": str(a), "columns": ["messages"]}, {"id": str(b)}])
    assert dataset["train"].column_names == dataset["test"].column_names == ["messages"]
    dataset = mixed([{"id": str(a)}, {"id": str(b)}])  # without `columns`, extra columns are dropped too
    assert dataset["train"].column_names == dataset["test"].column_names == ["messages"]


def test_columns_that_leave_out_the_stages_columns_are_refused_before_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "load_dataset", lambda *a, **k: pytest.fail("loaded before the spec was checked"))
    message = refusal([{"id": "a.jsonl"}, {"id": "b.jsonl", "columns": ["prompt", "chosen"]}], DPO)
    assert message.startswith("`dataset_mixture.datasets[1]` ('b.jsonl'): `columns` ['prompt', 'chosen'] leaves out")
    assert "['rejected']" in message


def test_columns_the_member_does_not_have_are_refused(tmp_path):
    a = rows_file(tmp_path, "a", 10)
    message = refusal([{"id": str(a), "columns": ["messages", "source"]}])
    assert "`dataset_mixture.datasets[0]`" in message and "names ['source']" in message


def test_columns_of_different_types_are_refused_with_the_members(tmp_path):
    a = rows_file(tmp_path, "a", 10)
    b = write_jsonl(
        [
            {
                "messages": [
                    {"role": "user", "content": "hi", "name": "x"},
                    {"role": "assistant", "content": "ok", "name": "y"},
                ]
            }
        ]
        * 10,
        tmp_path / "b.jsonl",
    )
    message = refusal([{"id": str(a)}, {"id": str(b)}])
    assert "different types" in message and "datasets[0]" in message and "datasets[1]" in message


# ---- a bad spec is refused, with the key and the member -----------------------------------------------------------


@pytest.mark.parametrize(
    "members, keys, expected",
    [
        ([{"id": "a.jsonl", "weight": 0}], {}, ("`dataset_mixture.datasets[0]` ('a.jsonl'): `weight` is 0", "(0, 1]")),
        ([{"id": "a.jsonl"}, {"id": "b.jsonl", "weight": 1.5}], {}, ("datasets[1]` ('b.jsonl'): `weight` is 1.5",)),
        ([{"id": "a.jsonl", "weight": -0.2}], {}, ("`weight` is -0.2",)),
        ([{"id": "a.jsonl", "weight": "half"}], {}, ("`weight` is 'half'",)),
        ([{"id": "a.jsonl", "weight": True}], {}, ("`weight` is True",)),
        ([{"id": "a.jsonl", "fraction": 0.5}], {}, ("datasets[0]` has the unknown key 'fraction'", "`weight`")),
        ([{"path": "a.jsonl"}], {}, ("unknown key 'path'", "did you mean `id`?")),
        ([{"id": "a.jsonl", "wieght": 0.5}], {}, ("unknown key 'wieght'", "did you mean `weight`?")),
        ([{"config": "main"}], {}, ("`dataset_mixture.datasets[0]` has no `id`",)),
        ([{"id": ""}], {}, ("has no `id`",)),
        (["a.jsonl"], {}, ("`dataset_mixture.datasets[0]` is 'a.jsonl', not a mapping",)),
        ([{"id": "a.jsonl", "columns": "messages"}], {}, ("`columns` must be a non-empty list",)),
        ([{"id": "a.jsonl", "columns": []}], {}, ("`columns` must be a non-empty list",)),
        ([{"id": "a.jsonl", "split": ""}], {}, ("`split` must be the name of a split",)),
        ([{"id": "a.jsonl", "config": 3}], {}, ("`config` must be the name",)),
        ([], {}, ("`dataset_mixture.datasets` must be a non-empty list",)),
        ([{"id": "a.jsonl"}], {"streaming": True}, ("`dataset_mixture` has the unknown key 'streaming'",)),
        ([{"id": "a.jsonl"}], {"seed": -1}, ("`dataset_mixture.seed` is -1",)),
        ([{"id": "a.jsonl"}], {"test_split_size": 1.5}, ("`dataset_mixture.test_split_size` is 1.5", "(0, 1)")),
        ([{"id": "a.jsonl"}], {"test_split_size": 0}, ("`dataset_mixture.test_split_size` is 0",)),
    ],
)
def test_a_bad_spec_is_refused_before_anything_loads(monkeypatch, members, keys, expected):
    assert_refused_before_loading(monkeypatch, refusal, members, keys, expected)


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"seed": 1}, "`dataset_mixture.datasets` must be a non-empty list"),
        ({"datasets": {"id": "a.jsonl"}}, "`dataset_mixture.datasets` must be"),
        ([{"id": "a.jsonl"}], "`dataset_mixture` must be a mapping"),
        ("a.jsonl", "`dataset_mixture` must be a mapping"),
    ],
)
def test_a_mixture_that_is_no_mapping_with_datasets_is_refused(value, expected):
    with pytest.raises(RecipeError) as refused:
        read_mixture(value)
    assert str(refused.value).startswith(expected)


def test_dataset_name_and_dataset_mixture_exclude_each_other(tmp_path):
    a = str(rows_file(tmp_path, "a", 10))
    for args in (DataArguments(dataset_name=a, dataset_mixture={"datasets": [{"id": a}]}), DataArguments()):
        with pytest.raises(RecipeError) as refused:
            load_recipe_dataset(args, SFT, seed=0)
        assert "`dataset_name`" in str(refused.value) and "`dataset_mixture`" in str(refused.value)
    with pytest.raises(RecipeError, match="give each dataset of the mixture its own `config`"):
        load_recipe_dataset(DataArguments(dataset_mixture={"datasets": [{"id": a}]}, dataset_config="x"), SFT, seed=0)


# ---- every member is checked like `dataset_name`, and named -------------------------------------------------------


def test_a_bad_record_is_named_with_its_member_file_and_line(tmp_path):
    a = rows_file(tmp_path, "a", 10)
    rows = [talk("b", i) for i in range(6)]
    rows[2] = {"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    b = write_jsonl(rows, tmp_path / "b.jsonl")
    message = refusal([{"id": str(a)}, {"id": str(b), "weight": 0.5}])
    assert message.startswith(f"`dataset_mixture.datasets[1]` ({str(b)!r}): The dataset file {str(b)!r}, line 3:")
    assert "the role 'human'" in message and "use 'user'" in message


def test_every_members_records_are_checked_whatever_its_weight_takes(tmp_path):
    rows = [talk("a", i) for i in range(20)]
    rows[19] = {"messages": []}
    a = write_jsonl(rows, tmp_path / "a.jsonl")
    assert "line 20: `messages` is an empty list" in refusal([{"id": str(a), "weight": 0.1}])


def test_a_bad_dpo_member_is_named(tmp_path):
    good = write_jsonl(dpo_rows(8), tmp_path / "good.jsonl")
    rows = dpo_rows(8)
    rows[4] = {**rows[4], "rejected": rows[4]["chosen"]}
    bad = write_jsonl(rows, tmp_path / "bad.jsonl")
    message = refusal([{"id": str(good)}, {"id": str(bad)}], DPO)
    assert message.startswith("`dataset_mixture.datasets[1]`") and "line 5:" in message and "identical" in message
    assert len(mixed([{"id": str(good)}, {"id": str(good), "weight": 0.5}], DPO)["train"]) == 10


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d / "missing.jsonl", ("does not exist",)),
        (lambda d: "./no-such-folder/", ("'./no-such-folder/' does not exist",)),
        (lambda d: write_jsonl([], d / "empty.jsonl"), ("is empty",)),
        (lambda d: write_jsonl([{"text": "hi"}] * 4, d / "text.jsonl"), ("mixes dataset types", "language modeling")),
    ],
)
def test_a_missing_or_unfit_member_is_named_and_never_tried_on_the_hub(tmp_path, make, expected):
    a = rows_file(tmp_path, "a", 10)
    other = str(make(tmp_path))
    message = refusal([{"id": str(a)}, {"id": other}])
    assert message.startswith(f"`dataset_mixture.datasets[1]` ({other!r}): "), message
    for text in expected:
        assert text in message, message


def test_a_member_file_that_is_not_utf8_or_not_json_is_named(tmp_path):
    a = rows_file(tmp_path, "a", 10)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(
        json.dumps(talk("x", 1), ensure_ascii=False).encode() + b"\n" + '{"messages": "café"}\n'.encode("latin-1")
    )
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(talk("x", 1)) + '\n{"messages": [\n')
    assert "datasets[1]" in (m := refusal([{"id": str(a)}, {"id": str(latin)}])) and "is not UTF-8" in m
    assert "datasets[0]" in (m := refusal([{"id": str(broken)}, {"id": str(a)}])) and "not valid JSONL" in m


def test_a_weight_that_takes_no_row_is_refused(tmp_path):
    a, b = rows_file(tmp_path, "a", 10), rows_file(tmp_path, "b", 4)
    message = refusal([{"id": str(a)}, {"id": str(b), "weight": 0.2}])
    assert message.startswith(f"`dataset_mixture.datasets[1]` ({str(b)!r}): `weight` 0.2 of its 4 row(s)")


def test_too_few_mixed_rows_to_hold_out_a_test_split_is_refused(tmp_path):
    a = rows_file(tmp_path, "a", 1)
    assert "too few to hold out a test split" in refusal([{"id": str(a)}])


def test_a_hub_member_is_loaded_with_its_config_and_split_and_its_rows_are_checked(tmp_path, monkeypatch):
    loads = []
    hub_rows = [talk("hub", i) for i in range(8)]

    def fake_hub(path, *args, **kwargs):
        loads.append((path, kwargs.get("name")))
        return DatasetDict({"train": Dataset.from_list(hub_rows[:2]), "extra": Dataset.from_list(hub_rows)})

    monkeypatch.setattr(data_module, "load_dataset", fake_hub)
    dataset = mixed([{"id": "someone/chats", "config": "en", "split": "extra", "weight": 0.5}])
    assert loads == [("someone/chats", "en")] and len(dataset["train"]) + len(dataset["test"]) == 4
    hub_rows[6] = {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "ok"}]}
    message = refusal([{"id": "someone/chats", "split": "extra"}])
    assert message.startswith(
        "`dataset_mixture.datasets[0]` ('someone/chats'): The dataset 'someone/chats', split 'extra', row index 6:"
    )
    assert "has no split 'test'" in refusal([{"id": "someone/chats", "split": "test"}])


# ---- the recipe parser, the record, the card, the run spec --------------------------------------------------------


def recipe_file(tmp_path: Path, mixture, **keys) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"dataset_mixture": mixture, **keys}, sort_keys=False))
    return path


def parsed(path: Path, *flags: str):
    return parse_recipe(
        SFT_RECIPE["make_parser"](), ["--config", str(path), "--output_dir", str(path.parent / "o"), *flags]
    )


def test_the_recipe_parser_reads_the_mixture_from_yaml(tmp_path):
    mixture = {
        "datasets": [{"id": "data/a.jsonl", "weight": 0.5, "columns": ["messages"]}, {"id": "owner/b"}],
        "seed": 3,
        "test_split_size": 0.2,
    }
    data_args, *_, recipe_yaml = parsed(recipe_file(tmp_path, mixture))
    assert data_args.dataset_mixture == mixture and data_args.dataset_name is None
    assert yaml.safe_load(recipe_yaml)["dataset_mixture"] == mixture  # the card's recipe shows it as given
    spec = read_mixture(data_args.dataset_mixture, 42, 0.1)
    assert [(m.id, m.weight, m.columns) for m in spec.members] == [
        ("data/a.jsonl", 0.5, ("messages",)),
        ("owner/b", 1.0, None),
    ]
    assert (spec.seed, spec.test_split_size) == (3, 0.2)


def test_the_recipe_parser_refuses_a_mixture_that_is_no_mapping_and_a_misspelt_trl_key(tmp_path):
    with pytest.raises(RecipeError, match="`dataset_mixture` in the recipe file .* takes a mapping or null"):
        parsed(recipe_file(tmp_path, [{"id": "a.jsonl"}]))
    trl_style = tmp_path / "trl.yaml"
    trl_style.write_text(yaml.safe_dump({"datasets": [{"path": "a.jsonl"}], "test_split_sise": 0.2}))
    with pytest.raises(RecipeError, match="Unknown recipe key.*'test_split_sise' \\(did you mean 'test_split_size'"):
        parse_recipe(SFT_RECIPE["make_parser"](), ["--config", str(trl_style), "--output_dir", str(tmp_path / "o")])


def test_the_run_spec_holds_the_mixture_so_a_changed_one_is_a_difference(tmp_path):
    a, b = rows_file(tmp_path, "a", 20), rows_file(tmp_path, "b", 10)
    half = {"datasets": [{"id": str(a), "weight": 0.5}, {"id": str(b)}]}
    whole = {"datasets": [{"id": str(a)}, {"id": str(b)}]}
    specs = []
    for mixture in (half, half, whole):
        args = parsed(recipe_file(tmp_path, mixture))[:5]
        specs.append(run_spec.build_spec(args, load_recipe_dataset(args[0], SFT, seed=args[1].seed)))
    assert run_spec.differences(specs[0], specs[1]) == []
    keys = [key for key, _, _ in run_spec.differences(specs[0], specs[2])]
    assert "dataset_mixture" in keys and "data (train split)" in keys
    with pytest.raises(RecipeError, match="dataset_mixture: .* in the checkpoint"):
        run_spec.checked_resume_spec(specs[2], specs[0], "run/checkpoint-2", 2, allow_changes=False)


def test_the_card_lists_every_member_with_its_weight_and_the_hub_ones_as_metadata(tmp_path):
    local = rows_file(tmp_path, "a", 4)
    mixture = {
        "datasets": [
            {"id": str(local), "weight": 0.5},
            {"id": "someone/chats", "config": "en", "split": "extra"},
            {"id": "someone/chats", "weight": 0.25},
        ]
    }
    hub_ids, line = describe_data(None, mixture)
    assert hub_ids == ["someone/chats"]
    assert line == (
        f"a mixture of `{local}` (weight 0.5), `someone/chats` (config en, split extra, weight 1), "
        "`someone/chats` (weight 0.25)"
    )
    assert describe_data("owner/name") == (["owner/name"], "`owner/name`")
    assert describe_data(str(local)) == ([], f"`{local}`")


def test_member_locations_name_every_member_id_for_the_output_check():
    assert member_locations({"datasets": [{"id": "a.jsonl"}, "junk", {"id": "owner/b"}]}) == {
        "dataset of `dataset_mixture.datasets[0]`": "a.jsonl",
        "dataset of `dataset_mixture.datasets[2]`": "owner/b",
    }
    assert member_locations(None) == {} and member_locations({"datasets": "x"}) == {}


# ---- TRL's `datasets:` list, with TRL's own selection -------------------------------------------------------------


def trl_mixed(members: list[dict], columns=SFT, run_seed: int = 0, **keys) -> DatasetDict:
    """The splits a recipe with TRL's `datasets: members` (and `keys`: test_split_size, streaming, ...) loads."""
    return load_recipe_dataset(DataArguments(datasets=members, **keys), columns, seed=run_seed)


def trl_refusal(members, columns=SFT, **keys) -> str:
    with pytest.raises(RecipeError) as refused:
        trl_mixed(members, columns, **keys)
    return str(refused.value)


def trls_own_rows(members: list[dict]) -> list[str]:
    """The rows TRL's own `get_dataset` mixes from `members` (no test split), as tags."""
    from trl.scripts.utils import DatasetMixtureConfig, get_dataset

    mixed_rows = get_dataset(DatasetMixtureConfig(datasets=[dict(member) for member in members]))["train"]
    return [row["messages"][0]["content"] for row in mixed_rows]


@pytest.mark.parametrize(
    "sizes, fractions",
    [((25, 7), (0.6, 0.4)), ((10, 10), (3, 1)), ((20, 6), (0.7, 0.3)), ((9, 4), (None, None)), ((12, 30), (1, 1))],
)
def test_trl_datasets_take_the_rows_trls_get_dataset_takes_then_goft_holds_out_with_the_seed(
    tmp_path, sizes, fractions
):
    folder = tmp_path / "chats"
    folder.mkdir()
    a = rows_file(tmp_path, "a", sizes[0])
    rows_file(folder, "b", sizes[1])
    members = [
        {"path": "json", "data_files": str(a), "fraction": fractions[0]},
        {"path": str(folder), "fraction": fractions[1]},
    ]
    members = [{k: v for k, v in m.items() if v is not None} for m in members]
    expected = trls_own_rows(members)  # TRL's first rows by normalised fraction, member after member
    dataset = trl_mixed(members, run_seed=3, test_split_size=0.25)
    split = Dataset.from_dict({"tag": expected}).train_test_split(test_size=0.25, shuffle=True, seed=3)
    assert tags(dataset) == list(split["train"]["tag"]) + list(split["test"]["tag"])
    if fractions[0] is None:
        assert len(expected) == sum(sizes)


def test_trl_datasets_read_data_files_lists_mappings_and_a_folders_named_splits_as_datasets_does(tmp_path):
    a, b = rows_file(tmp_path, "a", 6), rows_file(tmp_path, "b", 5)
    folder = tmp_path / "named"
    folder.mkdir()
    rows_file(folder, "train", 8), rows_file(folder, "test", 3)
    members = [
        {"path": "json", "data_files": [str(b), str(a)], "fraction": 0.8},
        {"path": "json", "data_files": {"train": str(a), "extra": str(b)}, "split": "extra", "fraction": 0.1},
        {"path": str(folder), "split": "test", "fraction": 0.1},
    ]
    expected = trls_own_rows(members)
    assert {t.split()[0] for t in expected} == {"a", "b", "test"}  # the folder's `test.jsonl` only
    assert sorted(tags(trl_mixed(members, test_split_size=0.2))) == sorted(expected)
    assert sorted(tags(trl_mixed([{"path": str(folder)}], test_split_size=0.2))) == sorted(
        trls_own_rows([{"path": str(folder)}])
    )


def test_trl_test_split_size_defaults_to_dataset_test_size_and_the_run_seed_picks_the_held_out_rows(tmp_path):
    members = [{"path": "json", "data_files": str(rows_file(tmp_path, "a", 30))}]
    args = DataArguments(datasets=members, dataset_test_size=0.2)
    assert [len(split) for split in load_recipe_dataset(args, SFT, seed=0).values()] == [24, 6]
    assert tags(trl_mixed(members, run_seed=1)) == tags(trl_mixed(members, run_seed=1))
    assert trl_mixed(members, run_seed=1)["test"]["messages"] != trl_mixed(members, run_seed=2)["test"]["messages"]


@pytest.mark.parametrize(
    "members, keys, expected",
    [
        ([{"path": "json", "data_files": "a.jsonl"}], {"streaming": True}, ("`streaming: true` is not supported",)),
        (
            [{"path": "json", "data_files": "a.jsonl", "fraction": 0.5}, {"path": "json", "data_files": "b.jsonl"}],
            {},
            ("`fraction` must be set for every dataset of `datasets` or for none", "`datasets[1]` has none"),
        ),
        ([{"path": "json", "data_files": "a.jsonl", "fraction": 0}], {}, ("`datasets[0]` ('json'): `fraction` is 0",)),
        ([{"path": "json", "data_files": "a.jsonl", "fraction": "half"}], {}, ("`fraction` is 'half'",)),
        ([{"id": "a.jsonl"}], {}, ("`datasets[0]` has the unknown key 'id'", "did you mean `path`?")),
        ([{"path": "json", "data_files": "a.jsonl", "weight": 0.5}], {}, ("unknown key 'weight'", "`fraction`")),
        ([{"name": "en"}], {}, ("`datasets[0]` has no `path`",)),
        (["a.jsonl"], {}, ("`datasets[0]` is 'a.jsonl', not a mapping",)),
        ([{"path": "json", "data_files": 3}], {}, ("`data_files` must be a file, a list of files or a mapping",)),
        ([{"path": "json", "data_files": "a.jsonl", "columns": ["prompt"]}], {}, ("leaves out the column(s)",)),
        ([], {}, ("`datasets` must be a non-empty list",)),
        (
            [{"path": "json", "data_files": "a.jsonl"}],
            {"test_split_size": 2.5},
            ("`test_split_size` is 2.5", "whole number of rows"),
        ),
        (
            [{"path": "json", "data_files": "a.jsonl"}],
            {"dataset_config": "en"},
            ("`dataset_config` applies to `dataset_name`", "its own `name`"),
        ),
        (
            [{"path": "json", "data_files": "a.jsonl"}],
            {"dataset_name": "a.jsonl"},
            ("Both `dataset_name` and `datasets` are given", "exactly one of `dataset_name`"),
        ),
        (
            [{"path": "json", "data_files": "a.jsonl"}],
            {"dataset_name": "a.jsonl", "dataset_mixture": {"datasets": []}},
            ("`dataset_name`, `dataset_mixture` and `datasets` are given",),
        ),
    ],
)
def test_a_bad_trl_datasets_spec_is_refused_before_anything_loads(monkeypatch, members, keys, expected):
    assert_refused_before_loading(monkeypatch, trl_refusal, members, keys, expected)


@pytest.mark.parametrize(
    "make, expected",
    [
        (
            lambda d: {"path": str(rows_file(d, "f", 4))},
            ("reads `path` as a folder or a Hub dataset id, not a file", "`path: json` and `data_files: "),
        ),
        (lambda d: {"path": "json"}, ("`path: json` reads the local files of `data_files`",)),
        (lambda d: {"path": "json", "data_files": str(d / "*.jsonl")}, ("is a pattern",)),
        (lambda d: {"path": "json", "data_files": str(d / "gone.jsonl")}, ("gone.jsonl' does not exist",)),
        (
            lambda d: {"path": "json", "data_files": str(rows_file(d, "f", 4)), "split": "test"},
            ("reads a list of `data_files` as the split 'train', not 'test'",),
        ),
        (
            lambda d: {"path": "json", "data_files": {"train": str(rows_file(d, "f", 4))}, "split": "x"},
            ("`data_files` has no split 'x'; it has ['train']",),
        ),
        (
            lambda d: {"path": "json", "data_files": str(rows_file(d, "f", 4)), "data_dir": "sub"},
            ("(and no `data_dir`)",),
        ),
        (lambda d: {"path": "text", "data_files": "a.txt"}, ("`path: text` reads text files", "`path: csv`")),
        (lambda d: {"path": "csv", "data_files": str(rows_file(d, "f", 4))}, ("holds json files", "`path: json`")),
        (lambda d: {"path": str(d), "data_files": "a.jsonl"}, ("with a local folder as `path`, give no `data_files`",)),
        (lambda d: {"path": str(d), "data_dir": "nope"}, ("`data_dir` 'nope' is no folder",)),
        (lambda d: {"path": str(d), "split": "validation"}, ("not 'validation'",)),
        (lambda d: {"path": "./no-such-folder"}, ("'./no-such-folder' does not exist",)),
    ],
)
def test_a_trl_member_goft_cannot_read_as_datasets_would_is_refused_and_named(tmp_path, make, expected):
    data = tmp_path / "data"
    data.mkdir()
    rows_file(data, "a", 6)
    member = make(data)
    message = trl_refusal([{"path": "json", "data_files": str(rows_file(tmp_path, "ok", 5))}, member])
    assert message.startswith(f"`datasets[1]` ({member['path']!r}): "), message
    for text in expected:
        assert text in message, message


def test_a_trl_members_records_are_checked_and_named_and_data_dir_reads_below_the_folder(tmp_path):
    rows = [talk("b", i) for i in range(6)]
    rows[3] = {"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    (tmp_path / "d" / "sub").mkdir(parents=True)
    b = write_jsonl(rows, tmp_path / "d" / "sub" / "b.jsonl")
    good = rows_file(tmp_path, "a", 8)
    message = trl_refusal([{"path": "json", "data_files": str(good)}, {"path": str(tmp_path / "d"), "data_dir": "sub"}])
    assert message.startswith(f"`datasets[1]` ({str(tmp_path / 'd')!r}): The dataset file {str(b)!r}, line 4:")
    write_jsonl([talk("b", i) for i in range(6)], b)
    assert len(tags(trl_mixed([{"path": str(tmp_path / "d"), "data_dir": "sub"}]))) == 6


def test_a_trl_hub_member_is_loaded_with_its_name_data_dir_and_data_files(monkeypatch):
    loads = []

    def fake_hub(path, *args, **kwargs):
        loads.append((path, kwargs))
        return DatasetDict({"train": Dataset.from_list([talk("hub", i) for i in range(8)])})

    monkeypatch.setattr(data_module, "load_dataset", fake_hub)
    dataset = trl_mixed([{"path": "someone/chats", "name": "en", "data_dir": "v2", "data_files": ["x.jsonl"]}])
    assert loads == [("someone/chats", {"name": "en", "data_dir": "v2", "data_files": ["x.jsonl"]})]
    assert len(tags(dataset)) == 8


def test_test_split_size_and_streaming_go_with_datasets_only(tmp_path):
    a = str(rows_file(tmp_path, "a", 10))
    with pytest.raises(RecipeError, match="`test_split_size` goes with TRL's `datasets` list.*`dataset_test_size`"):
        load_recipe_dataset(DataArguments(dataset_name=a, test_split_size=0.2), SFT, seed=0)
    with pytest.raises(RecipeError, match="`streaming` goes with.*`dataset_mixture.test_split_size`"):
        load_recipe_dataset(DataArguments(dataset_mixture={"datasets": [{"id": a}]}, streaming=True), SFT, 0)
    with pytest.raises(RecipeError, match="The data is missing: give exactly one of `dataset_name`.*`datasets`"):
        load_recipe_dataset(DataArguments(), SFT, seed=0)


def trl_recipe_file(tmp_path: Path, datasets, **keys) -> Path:
    path = tmp_path / "trl-recipe.yaml"
    path.write_text(yaml.safe_dump({"datasets": datasets, **keys}, sort_keys=False))
    return path


def test_the_recipe_parser_reads_trls_datasets_and_the_run_spec_and_card_hold_them(tmp_path):
    a, b = rows_file(tmp_path, "a", 20), rows_file(tmp_path, "b", 10)
    datasets = [
        {"path": "json", "data_files": str(a), "fraction": 0.7},
        {"path": "someone/chats", "name": "en", "fraction": 0.3},
    ]
    data_args, *_, recipe_yaml = parsed(trl_recipe_file(tmp_path, datasets, test_split_size=0.2))
    assert (data_args.datasets, data_args.test_split_size, data_args.streaming) == (datasets, 0.2, False)
    assert yaml.safe_load(recipe_yaml)["datasets"] == datasets
    spec = read_datasets(data_args.datasets, False, data_args.test_split_size, 42, 0.1)
    assert [(m.id, m.config, m.fraction) for m in spec.members] == [("json", None, 0.7), ("someone/chats", "en", 0.3)]
    assert describe_data(None, spec) == (
        ["someone/chats"],
        f"a mixture (TRL's `datasets`: the first rows of each) of "
        f"`{a}` (fraction 0.7), `someone/chats` (config en, fraction 0.3)",
    )
    specs = []
    for fraction in (0.7, 0.7, 0.5):
        members = [
            {"path": "json", "data_files": str(a), "fraction": fraction},
            {"path": "json", "data_files": str(b), "fraction": 0.3},
        ]
        args = parsed(trl_recipe_file(tmp_path, members))[:5]
        specs.append(run_spec.build_spec(args, load_recipe_dataset(args[0], SFT, seed=args[1].seed)))
    assert run_spec.differences(specs[0], specs[1]) == []
    assert "datasets" in [key for key, _, _ in run_spec.differences(specs[0], specs[2])]
    with pytest.raises(RecipeError, match="datasets: .* in the checkpoint"):
        run_spec.checked_resume_spec(specs[2], specs[0], "run/checkpoint-2", 2, allow_changes=False)
    with pytest.raises(RecipeError, match="`streaming: true` is not supported"):
        SFT_RECIPE["main"](
            *parsed(trl_recipe_file(tmp_path, members, streaming=True, model_name_or_path=str(tmp_path)))
        )


def test_trl_member_locations_name_every_local_path_and_data_file():
    from goft.data.trl_datasets import member_locations as trl_locations

    assert trl_locations(
        [
            {"path": "json", "data_files": ["a.jsonl", "b.jsonl"]},
            {"path": "data/c"},
            {"path": "json", "data_files": {"train": "d.jsonl"}},
            "junk",
        ]
    ) == {
        "dataset of `datasets[0]`, data file 0": "a.jsonl",
        "dataset of `datasets[0]`, data file 1": "b.jsonl",
        "dataset of `datasets[1]`": "data/c",
        "dataset of `datasets[2]`, data file 0": "d.jsonl",
    }
    assert trl_locations(None) == {}


# ---- a run on a mixture, end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("mixture-model") / "tiny")


def run_args(model: Path, recipe: Path, output_dir: Path) -> list[str]:
    """The recipe file's data (no `dataset_name`), 2 steps with a checkpoint at the end."""
    keys = {"max_steps": 2, "learning_rate": "1e-2", "max_length": 48, "save_steps": 2, "seed": 7}
    return ["--config", str(recipe), *run_flags(model, None, output_dir, **keys, dataloader_num_workers=0)]


def test_a_run_on_a_mixture_records_it_and_evaluation_rebuilds_its_held_out_split(model, tmp_path, monkeypatch):
    real = data_module.load_dataset
    hub = DatasetDict({"train": Dataset.from_list([talk("hub", i) for i in range(10)])})
    monkeypatch.setattr(
        data_module,
        "load_dataset",  # a Hub dataset, stood in offline
        lambda path, *a, **k: hub if path == "someone/chats" else real(path, *a, **k),
    )
    facts = rows_file(tmp_path, "facts", 24, source="facts")
    mixture = {
        "datasets": [{"id": str(facts), "weight": 0.5, "columns": ["messages"]}, {"id": "someone/chats"}],
        "test_split_size": 0.25,
    }
    output_dir = tmp_path / "run"
    run_recipe(
        SFT_RECIPE["make_parser"], SFT_RECIPE["main"], run_args(model, recipe_file(tmp_path, mixture), output_dir)
    )

    record = json.loads((output_dir / FINISHED_MARKER).read_text())["data"]
    assert record["dataset_name"] is None
    assert record["dataset_mixture"] == {
        "datasets": [
            {"id": str(facts), "config": None, "split": "train", "columns": ["messages"], "weight": 0.5},
            {"id": "someone/chats", "config": None, "split": "train", "columns": None, "weight": 1.0},
        ],
        "seed": 7,
        "test_split_size": 0.25,
    }
    card = (output_dir / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["datasets"] == ["someone/chats"]  # the Hub member, not the file
    assert f"- **Dataset:** a mixture of `{facts}` (weight 0.5), `someone/chats` (weight 1)\n" in card
    assert "dataset_mixture:" in card.split("## Recipe")[1]

    expected = load_recipe_dataset(DataArguments(dataset_mixture=mixture), SFT, seed=7)
    rebuilt = held_out_split(output_dir)  # what recipes/evaluate.py scores the adapter on
    assert rebuilt["messages"] == expected["test"]["messages"] and len(rebuilt) == 6  # ceil(0.25 * (12 + 10))
    assert {row[0]["content"].split()[0] for row in rebuilt["messages"]} <= {"facts", "hub"}

    write_jsonl([talk("facts", i + 100) for i in range(24)], facts)  # the data changes after training
    with pytest.raises(RecipeError, match=f"the mixture of '{facts}', 'someone/chats'.*changed since it was trained"):
        held_out_split(output_dir)


def test_a_resume_with_another_mixture_is_refused(model, tmp_path):
    a, b = rows_file(tmp_path, "a", 20), rows_file(tmp_path, "b", 10)
    output_dir = tmp_path / "run"
    before = recipe_file(tmp_path, {"datasets": [{"id": str(a), "weight": 0.5}, {"id": str(b)}]})
    args = parse_recipe(SFT_RECIPE["make_parser"](), run_args(model, before, output_dir))[:5]
    spec = run_spec.build_spec(args, load_recipe_dataset(args[0], SFT, seed=args[1].seed))
    checkpoint = output_dir / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"global_step": 2}')
    checkpoints.mark_complete(str(checkpoint), {"global_step": 2, run_spec.SPEC_KEY: spec})
    after = recipe_file(tmp_path, {"datasets": [{"id": str(a), "weight": 0.75}, {"id": str(b)}]})
    with pytest.raises(RecipeError) as refused:
        SFT_RECIPE["main"](*parse_recipe(SFT_RECIPE["make_parser"](), run_args(model, after, output_dir)))
    message = str(refused.value)
    assert "dataset_mixture: " in message and "'weight': 0.5" in message and "'weight': 0.75" in message
    assert "--resume_with_changes true" in message


def test_an_output_folder_inside_a_members_folder_is_refused(model, tmp_path):
    folder = tmp_path / "chats"
    folder.mkdir()
    rows_file(folder, "b", 10)
    recipe = recipe_file(tmp_path, {"datasets": [{"id": str(rows_file(tmp_path, "a", 10))}, {"id": str(folder)}]})
    with pytest.raises(RecipeError, match=r"lies inside the dataset of `dataset_mixture.datasets\[1\]`"):
        SFT_RECIPE["main"](*parse_recipe(SFT_RECIPE["make_parser"](), run_args(model, recipe, folder / "run")))
    assert not (folder / "run").exists()


def test_an_output_folder_inside_a_dataset_mixer_folder_is_refused(model, tmp_path):
    folder = tmp_path / "chats"
    folder.mkdir()
    rows_file(folder, "train", 10)
    recipe = tmp_path / "mixer.yaml"
    recipe.write_text(yaml.safe_dump({"dataset_mixer": {str(folder): 1.0}, "dataset_splits": ["train"]}))
    with pytest.raises(RecipeError, match=r"lies inside the dataset of `dataset_mixer`"):
        SFT_RECIPE["main"](*parse_recipe(SFT_RECIPE["make_parser"](), run_args(model, recipe, folder / "run")))
    assert not (folder / "run").exists()


def test_a_run_on_trls_datasets_records_them_and_evaluation_rebuilds_its_held_out_split(model, tmp_path):
    facts = rows_file(tmp_path, "facts", 24, source="facts")
    folder = tmp_path / "chats"
    folder.mkdir()
    rows_file(folder, "chat", 10)
    datasets = [
        {"path": "json", "data_files": str(facts), "columns": ["messages"], "fraction": 0.75},
        {"path": str(folder), "fraction": 0.25},
    ]
    output_dir = tmp_path / "run"
    recipe = trl_recipe_file(tmp_path, datasets, test_split_size=0.25)
    run_recipe(SFT_RECIPE["make_parser"], SFT_RECIPE["main"], run_args(model, recipe, output_dir))

    record = json.loads((output_dir / FINISHED_MARKER).read_text())["data"]
    assert record["dataset_name"] is None and "dataset_mixture" not in record and record["seed"] == 7
    assert record["datasets"] == [
        {
            "path": "json",
            "name": None,
            "data_dir": None,
            "data_files": [str(facts)],
            "split": "train",
            "columns": ["messages"],
            "fraction": 0.75,
        },
        {
            "path": str(folder),
            "name": None,
            "data_dir": None,
            "data_files": None,
            "split": "train",
            "columns": None,
            "fraction": 0.25,
        },
    ]
    assert record["test_split_size"] == 0.25
    card = (output_dir / "README.md").read_text()
    assert "datasets" not in yaml.safe_load(card.split("---")[1])  # no Hub dataset: none in the metadata
    assert (
        f"- **Dataset:** a mixture (TRL's `datasets`: the first rows of each) of `{facts}` (fraction 0.75), "
        f"`{folder}` (fraction 0.25)\n"
    ) in card

    expected = trls_own_rows([{k: v for k, v in m.items() if k != "columns"} for m in datasets])
    assert len(expected) == 24 + 8  # 0.75 : 0.25 of the most rows that take none twice
    rebuilt = held_out_split(output_dir)  # what recipes/evaluate.py scores the adapter on
    split = Dataset.from_dict({"tag": expected}).train_test_split(test_size=0.25, shuffle=True, seed=7)
    assert [row[0]["content"] for row in rebuilt["messages"]] == list(split["test"]["tag"])
