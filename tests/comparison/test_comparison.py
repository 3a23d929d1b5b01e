"""The comparison runner: matched-budget training of several methods, evaluation, table, JSON and plot."""

import hashlib
import json
import re

import pytest
import yaml
from trl import SFTConfig

from goft.comparison import CompareArguments, compare
from goft.errors import RecipeError
from goft.evaluation import assets as goft_assets
from goft.evaluation.frontier import Point, forgetting_at, pareto_frontier
from goft.evaluation.intervals import mean_interval
from goft.training.arguments.cli import make_recipe_parser
from tests.support.recipes import REPO, check_ok, run_script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def stage_recipe(path, model, data, **keys):
    """A stage's recipe file at `path`: 3 steps on `model` and `data` (a quarter held out), one checkpoint; `keys`."""
    recipe = {"model_name_or_path": str(model), "dataset_name": str(data), "dataset_test_size": 0.25, "max_steps": 3}
    recipe.update(per_device_train_batch_size=4, max_length=64, save_steps=3, report_to="none", seed=3)
    path.write_text(yaml.safe_dump({**recipe, "dataloader_num_workers": 0, **keys}))
    return path


@pytest.fixture
def comparison(assets, tmp_path):
    sft_config = stage_recipe(
        tmp_path / "sft.yaml", assets["model"], assets["sft"], logging_steps=1, adapter_target_modules=["all-linear"]
    )
    general = tmp_path / "general.jsonl"
    general.write_text(
        "".join(
            json.dumps({"text": t}) + "\n"
            for t in (
                "The river ran slowly past the mill, and the miller watched the water turn the great wheel.",
                "Bread rises because yeast feeds on sugar and gives off small bubbles of gas inside the dough.",
            )
        )
    )
    config = tmp_path / "compare.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "recipe": str(sft_config),
                "output_dir": str(tmp_path / "out"),
                "general_text": str(general),
                "task_eval_samples": 4,
                "max_length": 64,
                "methods": {
                    "givens": {"adapter": "givens", "learning_rate": [0.02, 0.08]},
                    "hra": {"adapter": "hra", "hra_r": 4, "learning_rate": 0.01},
                    "lora": {"adapter": "lora", "lora_r": 4, "learning_rate": [0.005, 0.02]},
                },
            }
        )
    )
    return {"config": config, "out": tmp_path / "out", "tmp": tmp_path}


def run_compare(*args):
    return run_script("compare.py", args, timeout=900)


@pytest.mark.slow
def test_learning_rate_sweep_trains_evaluates_reports_and_reuses_finished_runs(comparison):
    result = run_compare("--config", comparison["config"], "--only", "givens", "lora")
    check_ok(result)
    assert "[compare] 4 runs planned: 0 finished (reused), 4 to train and evaluate; about " in result.stdout
    out = comparison["out"]
    report = json.loads((out / "comparison.json").read_text())
    rows = report["rows"]
    # the sets are recorded by name and content, never by where goft happens to be installed
    packaged = goft_assets.RETENTION_QUESTIONS
    assert report["settings"]["retention_questions"] == {
        "file": "goft:retention_questions.jsonl",
        "sha256": hashlib.sha256(packaged.read_bytes()).hexdigest(),
    }
    general = comparison["tmp"] / "general.jsonl"
    assert report["settings"]["general_text"] == {
        "file": str(general),
        "sha256": hashlib.sha256(general.read_bytes()).hexdigest(),
    }
    assert str(packaged.parent) not in json.dumps(report["settings"])
    names = ["givens@lr=0.02", "givens@lr=0.08", "lora@lr=0.005", "lora@lr=0.02"]
    assert [r["name"] for r in rows] == names  # `only` picks from `methods`, in its order; one run per rate
    for row in rows:
        assert row["steps"] == 3 and row["trainable_parameters"] > 0
        assert row["kl_base_tuned"] > 0 and row["task"]["samples"] == 4
        assert row["task"]["answer_nll_tuned"] < row["task"]["answer_nll_base"]  # training fit the held-out answers
        assert row["drift"]["instructions"] >= 10 and row["drift"]["answer_kl_base_tuned"] > 0
    assert {r["learning_rate"] for r in rows} == {0.02, 0.08, 0.005}
    givens = [r for r in rows if r["group"] == "givens"]
    lora = [r for r in rows if r["group"] == "lora"]
    assert all(r["orthogonality_error"] <= 1e-5 for r in givens) and all(r["orthogonality_error"] is None for r in lora)
    assert (
        max(r["max_neuron_angle_change_deg"] for r in givens)
        < 1e-3
        < min(r["max_neuron_angle_change_deg"] for r in lora)
    )
    # the sweep summary is the frontier of the rows' own points, interpolated as `frontier` does
    sweep = report["sweep"]["kl"]
    for group, runs in (("givens", givens), ("lora", lora)):
        points = [Point(r["task"]["answer_nll_tuned"], r["kl_base_tuned"], r["name"]) for r in runs]
        frontier = pareto_frontier(points)
        assert sweep["methods"][group]["seeds"] == [3]  # the recipe's own seed
        assert [p["run"] for p in sweep["methods"][group]["frontiers"]["3"]] == [p.label for p in frontier]
        base = Point(runs[0]["task"]["answer_nll_base"], 0.0)
        for level, value in sweep["methods"][group]["at_level"].items():
            assert value == forgetting_at(frontier, float(level), base)
    table = (out / "comparison.md").read_text()
    assert all(f"| {name} |" in table for name in names) and "max_steps 3" in table
    assert "at equal task level" in table
    assert (out / "comparison.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "logs" / "lora-lr0.005.log").is_file()

    # the same comparison again continues it: its finished runs and their evaluations are reused
    adapter = (out / "runs" / "givens-lr0.02" / "adapter_model.safetensors").read_bytes()
    redo = run_compare("--config", comparison["config"], "--only", "givens", "lora")
    check_ok(redo)
    assert "4 runs planned: 4 finished (reused), 0 to train" in redo.stdout
    assert "reusing the finished run" in redo.stderr and "[compare] training" not in redo.stdout
    assert "[compare] evaluating" not in redo.stdout
    assert (out / "runs" / "givens-lr0.02" / "adapter_model.safetensors").read_bytes() == adapter
    reused = json.loads((out / "comparison.json").read_text())["rows"]
    assert [{k: v for k, v in r.items() if r[k] != rows[i][k]} for i, r in enumerate(reused)] == [{}] * 4

    # another comparison (other settings) is never written over silently
    other = run_compare("--config", comparison["config"], "--only", "givens", "lora", "--task_levels", "0.3")
    assert other.returncode == 2 and "already holds another comparison" in other.stderr
    # a method changed under the same name is not reused as if it were the old one
    changed = yaml.safe_load(comparison["config"].read_text())
    changed["methods"]["lora"]["lora_r"] = 8
    changed_config = comparison["tmp"] / "changed.yaml"
    changed_config.write_text(yaml.safe_dump(changed))
    refused = run_compare("--config", changed_config, "--only", "lora")
    assert refused.returncode == 2 and "lora@lr=0.005: " in refused.stderr
    assert "was trained with other settings (the method's keys changed" in refused.stderr
    # nor is a folder the comparison did not make
    (out / "runs" / "hra").mkdir()
    stray = run_compare("--config", comparison["config"])
    assert stray.returncode == 2 and "was not made by a comparison" in stray.stderr
    assert "[compare] training" not in refused.stdout + stray.stdout
    (out / "runs" / "hra").rmdir()

    # a method added to the sweep trains and evaluates that run alone; the estimate uses the measured runs; the
    # report then covers every finished run of the comparison, not only the method asked for
    plus = run_compare("--config", comparison["config"], "--only", "hra")
    check_ok(plus)
    assert "1 runs planned: 0 finished (reused), 1 to train" in plus.stdout and "median of 4 runs timed" in plus.stdout
    assert plus.stdout.count("[compare] training ") == 1 and "[compare] training hra" in plus.stdout
    assert plus.stdout.count("[compare] evaluating ") == 1
    report = json.loads((out / "comparison.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["givens@lr=0.02", "givens@lr=0.08", "hra", *names[2:]]
    assert [r for r in report["rows"] if r["name"] != "hra"] == reused
    assert set(report["sweep"]["kl"]["methods"]) == {"givens", "hra", "lora"}
    assert "| hra |" in (out / "comparison.md").read_text()
    assert json.loads((out / "runs" / "hra" / "compare_run.json").read_text())["flags"] == [
        "--adapter",
        "hra",
        "--hra_r",
        "4",
        "--learning_rate",
        "0.01",
    ]


@pytest.mark.slow
def test_a_sweep_over_two_seeds_trains_each_seed_in_its_own_folder_and_reuses_them(comparison):
    config = yaml.safe_load(comparison["config"].read_text())
    config["seeds"] = [3, 5]  # 3 is the recipe's own seed: those runs keep their usual names and folders
    config["methods"] = {"givens": {"adapter": "givens", "learning_rate": [0.02, 0.08]}}
    seeded = comparison["tmp"] / "seeds.yaml"
    seeded.write_text(yaml.safe_dump(config))
    result = run_compare("--config", seeded)
    check_ok(result)
    assert "4 runs planned: 0 finished (reused), 4 to train" in result.stdout
    out = comparison["out"]
    report = json.loads((out / "comparison.json").read_text())
    rows = report["rows"]
    assert [(r["name"], r["seed"]) for r in rows] == [
        ("givens@lr=0.02", 3),
        ("givens@lr=0.02,seed=5", 5),
        ("givens@lr=0.08", 3),
        ("givens@lr=0.08,seed=5", 5),
    ]
    flags = json.loads((out / "runs" / "givens-lr0.02-seed5" / "compare_run.json").read_text())["flags"]
    assert flags[-2:] == ["--seed", "5"]
    assert "--seed" not in json.loads((out / "runs" / "givens-lr0.02" / "compare_run.json").read_text())["flags"]
    recorded = json.loads((out / "runs" / "givens-lr0.02-seed5" / "goft_run.json").read_text())
    assert recorded["data"]["seed"] == 5  # the held-out split the evaluation rebuilds is this seed's
    weights = [
        (out / "runs" / f / "adapter_model.safetensors").read_bytes() for f in ("givens-lr0.02", "givens-lr0.02-seed5")
    ]
    assert weights[0] != weights[1]  # another seed: other data order and held-out split, another adapter
    # each seed's frontier from its own runs and base; the level's mean and interval over the two seeds
    method = report["sweep"]["kl"]["methods"]["givens"]
    assert method["seeds"] == [3, 5]
    for level in ("0.5", "0.1", "0.02"):
        per_seed = {}
        for seed in (3, 5):
            runs = [r for r in rows if r["seed"] == seed]
            points = [Point(r["task"]["answer_nll_tuned"], r["kl_base_tuned"], r["name"]) for r in runs]
            base = Point(runs[0]["task"]["answer_nll_base"], 0.0)
            per_seed[str(seed)] = forgetting_at(pareto_frontier(points), float(level), base)
        assert method["per_seed"][level] == per_seed
        if None not in per_seed.values():
            interval = mean_interval(list(per_seed.values()))
            assert method["at_level"][level] == pytest.approx(interval.mean)
            assert method["interval"][level] == pytest.approx([interval.low, interval.high])
    assert "| givens | 2 |" in (out / "comparison.md").read_text()
    assert (out / "comparison.png").read_bytes()[:8] == PNG_MAGIC
    redo = run_compare("--config", seeded)
    check_ok(redo)
    assert "4 runs planned: 4 finished (reused), 0 to train" in redo.stdout and "[compare] training" not in redo.stdout


@pytest.mark.slow
def test_plan_only_prints_the_runs_and_trains_nothing(comparison):
    result = run_compare("--config", comparison["config"], "--plan_only", "true")
    check_ok(result)
    assert "5 runs planned: 0 finished (reused), 5 to train and evaluate; about " in result.stdout
    assert "first guess from model size" in result.stdout
    assert "givens@lr=0.08: --adapter givens --learning_rate 0.08 (to train)" in result.stdout
    assert not (comparison["out"] / "runs").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"methods": {"lora": {"adapter": "lora", "max_steps": 50}}}, "matched budget"),
        ({"methods": {"lora": {"adapter": "lora", "lora_rank": 4}}}, "do not parse"),
        ({"only": ["dora"]}, "which `methods` does not define"),
        ({"general_text": "missing.jsonl"}, "does not exist"),
        ({"methods": {}}, "`methods` is empty"),
        ({"methods": {"lora": {"adapter": "lora", "learning_rate": [0.01, 0.01]}}}, "lists a value twice"),
        ({"methods": {"lora": {"adapter": "lora", "learning_rate": [0.01, -1]}}}, "positive number"),
        ({"retention_questions": "missing.jsonl"}, "retention question file"),
        ({"task_levels": [0.5, 0]}, "`task_levels` must be positive"),
        ({"stage": "ppo"}, "`stage` must be one of sft, dpo"),
        ({"seeds": [1, 2, 1]}, "`seeds` lists a seed twice"),
        ({"seeds": []}, "`seeds` must be a non-empty list of integers from 0 to 4294967295"),
        ({"seeds": [1, -2]}, "`seeds` must be a non-empty list of integers"),
        ({"seeds": [1, 2.5]}, "`seeds` must be a non-empty list of integers"),
        ({"seeds": [True, 2]}, "`seeds` must be a non-empty list of integers"),
        ({"seeds": "1 2"}, "`seeds` must be a non-empty list of integers"),
        ({"seeds": [2**32]}, "`seeds` must be a non-empty list of integers"),
        ({"seeds": [1, 2], "recipe_changes": {"seed": 7}}, "`seeds` and `recipe_changes: {seed: ...}` are both given"),
        ({"recipe": "missing.yaml"}, "does not exist"),
        ({"recipe_changes": {"output_dir": "elsewhere"}}, "may not set `output_dir`"),
        ({"recipe_changes": {"lr_schedule": "cosine"}}, "`recipe_changes` do not parse"),
        ({"recipe_changes": {"warmup_steps": -3}}, "`recipe_changes` do not parse"),
        (
            {
                "recipe_changes": {"lr_scheduler_type": "cosine"},
                "methods": {"lora": {"adapter": "lora", "lr_scheduler_type": "linear"}},
            },
            "matched budget",
        ),
        (
            {"recipe_changes": {"weight_decay": 0.1}, "methods": {"lora": {"adapter": "lora", "weight_decay": 0.0}}},
            "which `recipe_changes` already sets for every method",
        ),
    ],
)
def test_bad_comparisons_are_refused_before_training(comparison, change, message):
    config = yaml.safe_load(comparison["config"].read_text())
    config.update(change)
    args = CompareArguments(**config)
    with pytest.raises(RecipeError, match=re.escape(message)):
        compare(args, {"sft": REPO / "recipes" / "sft.py"}, {"sft": make_recipe_parser(SFTConfig)})
    assert not comparison["out"].exists()


@pytest.mark.slow
def test_dpo_stage_comparison_strict_goft_against_a_lora_baseline(assets, tmp_path):
    dpo_config = stage_recipe(tmp_path / "dpo.yaml", assets["model"], assets["dpo"])
    config = tmp_path / "compare-dpo.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "recipe": str(dpo_config),
                "stage": "dpo",
                "output_dir": str(tmp_path / "out"),
                "task_eval_samples": 4,
                "max_length": 64,
                "methods": {
                    "givens": {"adapter": "givens", "learning_rate": 0.05},
                    "lora": {
                        "adapter": "lora",
                        "lora_r": 4,
                        "allow_non_orthogonal_alignment": True,
                        "learning_rate": [0.01, 0.02],
                    },
                },
            }
        )
    )
    result = run_compare("--config", config)
    check_ok(result)
    report = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["givens", "lora@lr=0.01", "lora@lr=0.02"]
    for row in report["rows"]:
        assert row["task"]["task"] == "preference" and row["task"]["samples"] == 4
        assert row["knowledge"] is not None and row["kl_base_tuned"] > 0
    assert report["settings"]["stage"] == "dpo"
    # DPO runs are compared at equal preference loss: log 2 at the base, each method's frontier from its runs
    assert all(r["task"]["preference_loss_base"] == pytest.approx(0.693147) for r in report["rows"])
    lora = [r for r in report["rows"] if r["group"] == "lora"]
    best = min(lora, key=lambda r: (r["task"]["preference_loss_tuned"], r["kl_base_tuned"]))
    assert report["sweep"]["kl"]["methods"]["lora"]["frontiers"][str(best["seed"])][0] == {
        "run": best["name"],
        "task_level": best["task"]["preference_loss_tuned"],
        "forgetting": best["kl_base_tuned"],
    }
    assert set(report["sweep"]["kl"]["methods"]) == {"givens", "lora"}
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "at preference loss 0.1" in table and "answer NLL" not in table
    assert json.loads((tmp_path / "out" / "runs" / "givens" / "goft_run.json").read_text())["stage"] == "dpo"


def test_an_evaluation_is_reused_only_while_what_it_measured_is_unchanged(tmp_path, monkeypatch):
    from goft.comparison import runner
    from goft.comparison.plan import Run
    from goft.evaluation import knowledge
    from goft.evaluation.runner import EvaluationSets

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    run = Run("givens", "givens", {}, folder)
    sets = EvaluationSets(task_samples=8)
    key = runner.evaluation_key(run, sets)
    assert runner.evaluation_key(run, EvaluationSets(task_samples=8)) == key
    assert runner.evaluation_key(run, EvaluationSets(task_samples=9)) != key
    monkeypatch.setattr(knowledge, "ANSWER_TOKENS", knowledge.ANSWER_TOKENS + 1)
    assert runner.evaluation_key(run, sets) != key  # a longer answer budget can change what counts as correct
    monkeypatch.undo()
    (folder / "adapter_model.safetensors").write_bytes(b"other weights")
    assert runner.evaluation_key(run, sets) != key


def _logged_learning_rates(run_dir):
    (state,) = run_dir.glob("checkpoint-*/trainer_state.json")
    return [
        entry["learning_rate"] for entry in json.loads(state.read_text())["log_history"] if "learning_rate" in entry
    ]


@pytest.mark.slow
def test_recipe_changes_apply_to_every_run_and_are_part_of_what_a_run_is(comparison):
    """`recipe_changes` changes the shared recipe for every method: each run trains with it, records it, and the
    report's matched budget names it; the recipe's own schedule (the trainer's default, linear decay) decays."""
    config = yaml.safe_load(comparison["config"].read_text())
    config["methods"] = {"lora": config["methods"]["lora"]}
    constant = {
        **config,
        "output_dir": str(comparison["tmp"] / "constant"),
        "recipe_changes": {"lr_scheduler_type": "constant", "warmup_steps": 0},
    }
    paths = {}
    for name, settings in (("constant", constant), ("default", config)):
        paths[name] = comparison["tmp"] / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(settings))
    check_ok(run_compare("--config", paths["constant"], "--only", "lora"))
    out = comparison["tmp"] / "constant"
    for rate in (0.005, 0.02):
        run = out / "runs" / f"lora-lr{rate:g}"
        assert _logged_learning_rates(run) == [rate] * 3
        spec = json.loads((run / "compare_run.json").read_text())
        assert spec["recipe"]["lr_scheduler_type"] == "constant" and "lr_scheduler_type" not in spec["flags"]
    report = json.loads((out / "comparison.json").read_text())
    assert report["settings"]["budget"]["lr_scheduler_type"] == "constant"
    assert "lr_scheduler_type constant" in (out / "comparison.md").read_text()

    check_ok(run_compare("--config", paths["default"], "--only", "lora"))
    decaying = _logged_learning_rates(comparison["out"] / "runs" / "lora-lr0.005")
    assert decaying == sorted(decaying, reverse=True) and decaying[0] > decaying[-1]


def test_the_base_answers_the_anchor_prompts_once_per_comparison(tmp_path):
    from goft.comparison import launch
    from goft.comparison.plan import Run
    from goft.training.trainers.replay import REPLAY_FILE

    runs = [Run(name, "givens", {}, tmp_path / "runs" / name) for name in ("first", "second", "third")]
    for run in runs:
        run.output_dir.mkdir(parents=True)
    launch.share_base_answers(runs[0])
    assert not (runs[0].output_dir / REPLAY_FILE).exists()  # nothing generated yet: nothing to share
    (runs[0].output_dir / REPLAY_FILE).write_text('{"key": "k", "answers": []}')
    (runs[2].output_dir / REPLAY_FILE).write_text('{"key": "own", "answers": []}')
    launch.share_base_answers(runs[1])
    launch.share_base_answers(runs[2])
    assert (runs[1].output_dir / REPLAY_FILE).read_text() == '{"key": "k", "answers": []}'
    assert (runs[2].output_dir / REPLAY_FILE).read_text() == '{"key": "own", "answers": []}'  # never overwritten
