"""The retention set, answer normalisation and scoring, open-instruction drift, and the sweep frontier."""

import copy
import json
import subprocess
import sys
import zipfile

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import goft
from goft.errors import RecipeError
from goft.evaluation import assets
from goft.evaluation.drift import answer_drift, base_answers, load_instructions
from goft.evaluation.frontier import Point, common_levels, forgetting_at, pareto_frontier
from goft.evaluation.knowledge import (
    Question,
    is_correct,
    knowledge_retention,
    known_questions,
    load_questions,
    normalise_answer,
)
from goft.evaluation.model_io import greedy_answers
from goft.evaluation.sweep import render_sweep, sweep_summary
from goft.evaluation.sweep_plot import at_floor, axis_floor, plot_sweep
from tests.support.data import write_jsonl
from tests.support.models import save_tiny_chat_model
from tests.support.recipes import REPO

TARGETS = ["q_proj", "v_proj", "down_proj"]


# ---- normalisation and scoring ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is Twenty-One.", "answer is 21"),
        ("It has two hundred and five bones", "it has 205 bones"),
        ("About 1,000 people", "about 1000 people"),
        ("Pi is roughly 3.14.", "pi is roughly 3.14"),
        ("São Paulo!", "sao paulo"),
        ("H₂O", "h2o"),
        ("two thousand five hundred", "2500"),
        ("An apple, a pear and the plum", "apple pear and plum"),
        ("Washington, D.C.", "washington d c"),
        ("snake_case", "snake case"),
    ],
)
def test_normalise_answer(text, expected):
    assert normalise_answer(text) == expected


@pytest.mark.parametrize(
    "reply, answers, correct",
    [
        ("The capital of France is Paris.", ["Paris"], True),
        ("France", ["Paris"], False),  # the one-word habit: the country, not its capital
        ("Parisian food is famous.", ["Paris"], False),  # whole words only
        ("There are seven days in a week.", ["7"], True),  # number words match digits
        ("7 + 5 = 12", ["twelve"], True),  # and digits match number words
        ("It is 112.", ["12"], False),
        ("Water is H2O.", ["H₂O"], True),
        ("William Shakespeare wrote it.", ["Shakespeare", "William Shakespeare"], True),
        ("", ["Paris"], False),
    ],
)
def test_is_correct(reply, answers, correct):
    assert is_correct(reply, answers) is correct


def test_the_shipped_sets_are_well_formed():
    questions = load_questions(assets.RETENTION_QUESTIONS)
    assert len(questions) >= 150
    topics = {q.topic for q in questions}
    assert {"geography", "science", "arithmetic", "language", "everyday"} <= topics
    assert len({q.id for q in questions}) == len(questions)
    for question in questions:  # no question gives its own answer away
        assert not is_correct(question.question, question.answers), question.id
    instructions = load_instructions(assets.OPEN_INSTRUCTIONS)
    assert len(instructions) >= 10 and len(set(instructions)) == len(instructions)


def words(text: str) -> set[str]:
    return set(normalise_answer(text).split())


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


@pytest.mark.parametrize(
    "data_file, templates_shared",
    [  # the two SFT files take several seconds each
        pytest.param("demo_sft.jsonl", False, marks=pytest.mark.slow),
        ("demo_dpo.jsonl", False),
        pytest.param("facts_sft.jsonl", True, marks=pytest.mark.slow),
        ("overwrite_sft.jsonl", True),  # "What is the capital of <another country>?": the retention template
    ],
)
def test_no_shipped_training_prompt_is_a_retention_question(data_file, templates_shared):
    """Retention must measure what training did not teach: no prompt of the shipped data is a retention question, and
    no real-world prompt is a near copy of one (half its words or more) or asks for its answer in similar words. The
    invented facts share templates and words with it ("What colour is the water of the <invented> River?") by
    design: learning new facts of a known kind without losing the old ones is that task's point."""
    questions = load_questions(assets.RETENTION_QUESTIONS)
    rows = [json.loads(line) for line in (REPO / "data" / data_file).read_text().splitlines() if line.strip()]
    prompts = {(r["prompt"] if "prompt" in r else r["messages"][:-1])[-1]["content"]: r for r in rows}
    for prompt, row in prompts.items():
        asked = words(prompt)
        reply = words((row.get("chosen") or row.get("messages"))[-1]["content"])
        for question in questions:
            assert normalise_answer(prompt) != normalise_answer(question.question), prompt
            similarity = jaccard(asked, words(question.question))
            assert templates_shared or similarity < 0.5, (prompt, question.question)
            same_answer = any(words(a) <= reply for a in question.answers)
            assert templates_shared or not (same_answer and similarity >= 0.25), (prompt, question.question)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("", "is empty"),
        ('{"id": "a", "topic": "t", "question": "q?"}\n', "must have"),
        ("[1, 2]\n", "is not a JSON object"),
        ('{"id": "a", "topic": "t", "question": "q?", "answers": []}\n', "non-empty list"),
        ('{"id": "a", "topic": "t", "question": "q?", "answers": ["?"]}\n', "with words in them"),
        (
            '{"id": "a", "topic": "t", "question": "q?", "answers": ["x"]}\n'
            '{"id": "a", "topic": "t", "question": "r?", "answers": ["y"]}\n',
            "used twice",
        ),
        ('{"id": "a"\n', "not valid JSON"),
    ],
)
def test_bad_question_files_are_refused(tmp_path, content, message):
    path = tmp_path / "questions.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RecipeError, match=message):
        load_questions(path)


# ---- retention and drift on a tiny model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = save_tiny_chat_model(tmp_path_factory.mktemp("sets") / "tiny")
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(
        folder
    )


def questions_the_base_answers(model, tokenizer, n: int = 12) -> list[Question]:
    """Questions whose accepted answer is the first word the tiny random base replies with: it knows them all."""
    asked = [f"question number {i}?" for i in range(n)]
    replies = greedy_answers(model, tokenizer, [[{"role": "user", "content": q}] for q in asked], 24)
    found = []
    for index, (question, reply) in enumerate(zip(asked, replies)):
        words = normalise_answer(reply).split()
        if words:
            found.append(Question(f"q-{index}", "tiny", question, (words[0],)))
    return found


def test_retention_is_exactly_one_for_an_identity_adapter_and_falls_after_a_change(tiny):
    base, tokenizer = tiny
    questions = questions_the_base_answers(base, tokenizer)
    assert len(questions) >= 6
    known = known_questions(base, tokenizer, questions + [Question("x", "tiny", "question x?", ("zzzqqq",))])
    assert known == questions  # the base answers every question built from its own replies, and not the other
    model = get_peft_model(copy.deepcopy(base), goft.GivensConfig(target_modules=TARGETS))
    result = knowledge_retention(model, tokenizer, known)
    assert result["retention"] == 1.0 and result["lost"] == [] and result["known_to_base"] == len(known)
    assert result["retention_by_topic"] == {"tiny": 1.0}
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(target_modules=TARGETS, r=4, init_lora_weights=False))
    with torch.no_grad():
        for parameter in lora.parameters():
            if parameter.requires_grad:
                parameter.mul_(40.0)
    changed = knowledge_retention(lora, tokenizer, known)
    assert changed["retention"] < 1.0 and changed["lost"]
    assert changed["retained"] == len(known) - len(changed["lost"])
    assert changed["retention"] == changed["retained"] / len(known)


def test_retention_without_known_questions_is_not_a_number(tiny):
    base, tokenizer = tiny
    model = get_peft_model(copy.deepcopy(base), goft.GivensConfig(target_modules=TARGETS))
    result = knowledge_retention(model, tokenizer, [])
    assert result["known_to_base"] == 0 and result["retention"] != result["retention"]


def test_answer_drift_is_zero_for_an_identity_adapter_and_matches_its_definition(tiny):
    base, tokenizer = tiny
    instructions = ["Explain rain.", "List three fruits."]
    model = get_peft_model(copy.deepcopy(base), goft.GivensConfig(target_modules=TARGETS))
    reference = base_answers(model, tokenizer, instructions)
    assert reference.answers == base_answers(base, tokenizer, instructions).answers  # adapter off = the base
    same = answer_drift(model, tokenizer, reference)
    assert same["answer_kl_base_tuned"] == 0.0 and same["answer_length_ratio"] == 1.0
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5)
    moved = answer_drift(model, tokenizer, reference)
    # KL from its definition on the first instruction: teacher-forced on the base's own answer, per answer token
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": instructions[0]}], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": instructions[0]}, {"role": "assistant", "content": reference.answers[0]}],
        tokenize=False,
    ).rstrip()
    start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        tuned = torch.log_softmax(model(input_ids=ids).logits[0, start - 1 : -1].double(), -1)
        with model.disable_adapter():
            plain = torch.log_softmax(model(input_ids=ids).logits[0, start - 1 : -1].double(), -1)
    first = (plain.exp() * (plain - tuned)).sum().item()
    alone = answer_drift(model, tokenizer, base_answers(base, tokenizer, instructions[:1]))
    assert alone["answer_kl_base_tuned"] == pytest.approx(first / (ids.shape[1] - start), rel=1e-9)
    assert moved["answer_kl_base_tuned"] > 0


# ---- frontier and interpolation -----------------------------------------------------------------------------------


POINTS = [
    Point(1.0, 0.1, "a"),
    Point(0.1, 0.3, "b"),
    Point(0.5, 0.5, "c"),
    Point(0.01, 1.0, "d"),
    Point(0.2, float("nan"), "e"),
]


def test_pareto_frontier_keeps_the_undominated_points_by_hand():
    assert [p.label for p in pareto_frontier(POINTS)] == ["d", "b", "a"]  # c: b learned more and forgot less
    ties = [Point(0.1, 0.3, "x"), Point(0.1, 0.2, "y"), Point(0.2, 0.2, "z")]
    assert [p.label for p in pareto_frontier(ties)] == ["y"]


def test_forgetting_is_interpolated_in_log_task_level_by_hand():
    frontier, base = pareto_frontier(POINTS), Point(2.0, 0.0, "base")
    # between b (0.1, 0.3) and a (1.0, 0.1): t = log(0.5 / 0.1) / log(10) = 0.69897, 0.3 − 0.2 t = 0.160206
    assert forgetting_at(frontier, 0.5, base) == pytest.approx(0.160206, abs=1e-6)
    # between a (1.0, 0.1) and the base (2.0, 0): t = log 1.5 / log 2 = 0.584963, 0.1 − 0.1 t = 0.0415037
    assert forgetting_at(frontier, 1.5, base) == pytest.approx(0.0415037, abs=1e-6)
    assert forgetting_at(frontier, 0.1, base) == pytest.approx(0.3)  # a measured point
    assert forgetting_at(frontier, 3.0, base) == 0.0  # above the base's own level: nothing to learn
    assert forgetting_at(frontier, 0.005, base) is None  # beyond the most trained run: not extrapolated
    assert forgetting_at(frontier, 1.5) == pytest.approx(0.1)  # without the base: the least-trained point
    assert common_levels({"x": frontier, "y": [Point(0.2, 0.1)]}, [0.5, 0.1, 0.02]) == [0.5]


def test_sweep_summary_and_its_table():
    def row(group, name, nll, kl, retention):
        return {
            "group": group,
            "name": name,
            "kl_base_tuned": kl,
            "task": {"task": "exact_match", "answer_nll_base": 2.0, "answer_nll_tuned": nll},
            "knowledge": {"retention": retention, "retained": 0, "known_to_base": 10},
        }

    rows = [
        row("g", "g@1", 1.0, 0.1, 0.9),
        row("g", "g@2", 0.1, 0.3, 0.7),
        row("g", "g@3", 0.01, 1.0, 0.5),
        row("l", "l@1", 0.2, 0.2, 0.8),
    ]
    summary = sweep_summary(rows, [0.5, 0.1])
    assert summary["kl"]["common_levels"] == [0.5]
    assert summary["kl"]["methods"]["g"]["at_level"]["0.5"] == pytest.approx(0.160206, abs=1e-6)
    assert summary["kl"]["methods"]["l"]["at_level"]["0.1"] is None
    assert summary["lost"]["methods"]["g"]["at_level"]["0.1"] == pytest.approx(0.3)
    table = render_sweep(summary, [0.5, 0.1])
    assert (
        "| g | 1 | 0.16 | 0.3 |" in table and "| l | 1 | 0.12 | — |" in table
    )  # l@1 (0.2, 0.2) to the base (2, 0): 0.2 − 0.2·log 2.5 / log 10


def test_the_plot_clips_over_trained_runs_two_decades_past_the_smallest_level(tmp_path):
    runs = [Point(0.3, 0.01, "under"), Point(0.004, 0.05, "fits"), Point(1e-60, 0.2, "over")]
    assert axis_floor(runs, [0.1, 0.01]) == pytest.approx(1e-4)  # 0.01 / 10²
    assert axis_floor(runs[:2], [0.1, 0.01]) is None  # nothing past the floor: nothing clipped
    assert axis_floor(runs, []) is None
    clipped = at_floor(runs, 1e-4)
    assert [p.task for p in clipped] == [0.3, 0.004, 1e-4] and [p.label for p in clipped] == ["under", "fits", "over"]
    assert at_floor(runs, None) == runs

    def row(name, loss, kl):
        return {
            "group": "g",
            "name": name,
            "kl_base_tuned": kl,
            "task": {"task": "preference", "preference_loss_base": 0.693, "preference_loss_tuned": loss},
        }

    rows = [row("a", 0.05, 1e-4), row("b", 1e-60, 0.1)]
    plot_sweep(rows, sweep_summary(rows, [0.1, 0.01]), tmp_path / "plot.png", "t", [0.1, 0.01])
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_instructions_file_errors(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_instructions(tmp_path / "none.jsonl")
    bad = write_jsonl([{"prompt": "x"}], tmp_path / "bad.jsonl")
    with pytest.raises(RecipeError, match="needs a non-empty `instruction`"):
        load_instructions(bad)
    (tmp_path / "broken.jsonl").write_text("{\n")
    with pytest.raises(RecipeError, match="not valid JSON"):
        load_instructions(tmp_path / "broken.jsonl")
    assert load_instructions(write_jsonl([{"instruction": "Explain tides."}], tmp_path / "ok.jsonl")) == [
        "Explain tides."
    ]


@pytest.mark.slow
def test_the_evaluation_sets_ship_inside_the_wheel(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("goft-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (assets.GENERAL_TEXT, assets.RETENTION_QUESTIONS, assets.OPEN_INSTRUCTIONS):
        assert f"goft/evaluation/data/{path.name}" in names
