"""SFT replay: the base model's own answers to everyday requests mixed into the training split."""

import json
import re
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
from datasets import Dataset

from goft.errors import RecipeError
from goft.evaluation import assets as shipped
from goft.evaluation.drift import load_instructions
from goft.evaluation.knowledge import load_questions, normalise_answer
from goft.evaluation.model_io import greedy_replies
from goft.training.arguments.fields import RetentionArguments
from goft.training.trainers import replay
from goft.training.trainers.forgetting import check_retention_arguments
from goft.training.trainers.replay import (
    REPLAY_FILE,
    base_replay_answers,
    load_replay_prompts,
    mix_replay,
    replay_row_count,
)
from tests.support.data import sft_rows, write_jsonl
from tests.support.recipes import REPO, check_ok, common_args, launch, recipe_flags, run_summary
from tests.support.replay import PROMPTS, base_that_ends_some_replies, first_tokens

FRAME_WORDS = {
    "what",
    "which",
    "who",
    "how",
    "many",
    "is",
    "are",
    "do",
    "does",
    "in",
    "on",
    "of",
    "for",
    "by",
    "to",
    "our",
    "there",
    "called",
    "call",
    "we",
    "you",
    "its",
    "that",
    "with",
    "and",
    "or",
}
# factual replay questions that share a sentence frame with a retention question but ask another fact (reviewed)
REVIEWED_FRAMES = {
    ("Which planet is the hottest in our solar system?", "what is largest planet in our solar system"),
    ("How many vowels are there in the English alphabet?", "how many letters are there in english alphabet"),
    ("Which planet is the hottest in our solar system?", "how many planets are in our solar system"),
    ("Which is the smallest continent by area?", "what is largest continent by area"),
    ("What is the tallest mountain in Africa?", "what is tallest mountain in world"),
    ("What is the largest island in the world?", "what is largest bird in world"),
    ("What is the chemical symbol for carbon?", "what is chemical symbol for iron"),
    ("What is the chemical symbol for carbon?", "what is chemical symbol for gold"),
    ("What is the main ingredient in hummus?", "what is main ingredient of guacamole"),
}


def _content_words(text: str) -> set[str]:
    return set(normalise_answer(text).split()) - FRAME_WORDS


def test_shipped_replay_prompts_are_distinct_from_every_evaluation_set():
    requests, questions = (load_replay_prompts(path) for path in shipped.DEFAULT_REPLAY)
    assert len(requests) == 96 and len(questions) == 120
    assert replay.replay_prompt_set() == requests + questions and len(set(requests + questions)) == 216
    evaluated = {normalise_answer(q.question) for q in load_questions(shipped.RETENTION_QUESTIONS)}
    evaluated |= {normalise_answer(i) for i in load_instructions(shipped.OPEN_INSTRUCTIONS)}
    demo_prompts = {
        normalise_answer(json.loads(line)["prompt"][0]["content"])
        for line in (REPO / "data" / "demo_dpo.jsonl").read_text().splitlines()
        if line.strip()
    }
    assert not {normalise_answer(p) for p in requests + questions} & (evaluated | demo_prompts)
    # nor a near copy: no everyday request shares as much as 45% of its words with an evaluated one (Jaccard) ...
    words = [set(normalise_answer(p).split()) for p in requests]
    assert max(len(w & set(e.split())) / len(w | set(e.split())) for w in words for e in evaluated) < 0.45
    # ... and a factual question that shares 45% of its content words with one was reviewed as another fact
    near = {
        (q, e)
        for q in questions
        for e in evaluated | demo_prompts
        if len(_content_words(q) & _content_words(e)) / len(_content_words(q) | _content_words(e)) >= 0.45
    }
    assert near <= REVIEWED_FRAMES, sorted(near - REVIEWED_FRAMES)
    assert not any("capital" in normalise_answer(q).split() for q in questions)  # capitals are the retention set's


def test_replay_rows_make_up_the_requested_share():
    assert replay_row_count(0.2, 360) == 90 and replay_row_count(0.5, 10) == 10
    assert replay_row_count(0.25, 7) == 2 and replay_row_count(0.01, 3) == 1  # 7/3 rounds to 2; at least one row


def test_mix_replay_adds_finished_answers_cycled_and_keeps_the_task_rows():
    task = Dataset.from_list([{**row, "source": "task"} for row in sft_rows(12)])
    answers = [
        {"prompt": "a", "answer": "one", "finished": True},
        {"prompt": "b", "answer": "cut", "finished": False},
        {"prompt": "c", "answer": "three", "finished": True},
        {"prompt": "d", "answer": "", "finished": True},
    ]
    mixed, record = mix_replay(task, answers, 0.25)
    assert len(mixed) == 16 and mixed.features == task.features
    assert mixed.select(range(12)).to_list() == task.to_list()  # the task rows untouched, in order
    replayed = mixed.select(range(12, 16))
    assert [m[0]["content"] for m in replayed["messages"]] == ["a", "c", "a", "c"]
    assert [
        m[1] == {"role": "assistant", "content": "one" if m[0]["content"] == "a" else "three"}
        for m in replayed["messages"]
    ] == [True] * 4
    assert replayed["source"] == [None] * 4
    assert record == {
        "replay/rows": 4,
        "replay/share": 0.25,
        "replay/distinct_prompts": 2,
        "replay/unfinished_answers_dropped": 2,
    }
    with pytest.raises(RecipeError, match="finished none of its replay answers"):
        mix_replay(task, [{"prompt": "b", "answer": "cut", "finished": False}], 0.25)
    with pytest.raises(RecipeError, match="`messages`, or prompt-completion conversations"):
        mix_replay(Dataset.from_list([{"text": "x"}]), answers, 0.25)


def test_greedy_replies_say_whether_the_reply_ended(assets):
    model, tokenizer, firsts = first_tokens(assets["model"], PROMPTS)
    never = [i for i in range(len(tokenizer)) if i not in firsts and i != tokenizer.eos_token_id][0]
    model.generation_config.eos_token_id = [never]
    tokenizer.eos_token_id = never
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    assert [done for _, done in greedy_replies(model, tokenizer, conversations, 3)] == [False] * len(PROMPTS)
    model.generation_config.eos_token_id = [never, firsts[0]]  # the first prompt's reply ends at its first token
    replies = greedy_replies(model, tokenizer, conversations, 3)
    assert [done for _, done in replies] == [f == firsts[0] for f in firsts] and replies[0][1]
    answers = base_replay_answers(model, tokenizer, PROMPTS, 3)
    assert [a["finished"] for a in answers] == [done for _, done in replies]
    assert [a["answer"] for a in answers] == [reply.strip() for reply, _ in replies]


@pytest.mark.parametrize(
    "keys, stage, message",
    [
        (dict(replay_share=0.3), "dpo", "is an SFT key"),
        (dict(replay_share=0.95), "sft", "must be in (0, 0.9]"),
        (dict(replay_share=-0.1), "sft", "must be in (0, 0.9]"),
        (dict(replay_share=0.3, replay_answer_tokens=0), "sft", "at least 1"),
        (dict(replay_share=0.3, replay_prompts="/no/such/file.jsonl"), "sft", "does not exist"),
    ],
)
def test_bad_replay_keys_are_refused(keys, stage, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        check_retention_arguments(RetentionArguments(**keys), SimpleNamespace(deepspeed=None), stage)


def test_replay_prompt_files_are_checked_and_replay_is_refused_under_deepspeed(tmp_path, monkeypatch):
    empty = write_jsonl([{"id": 1, "prompt": " "}], tmp_path / "empty.jsonl")
    twice = write_jsonl([{"prompt": "a"}, {"prompt": "a"}], tmp_path / "twice.jsonl")
    for path, message in ((empty, "has no `prompt` text"), (twice, "repeats an earlier prompt")):
        with pytest.raises(RecipeError, match=message):
            check_retention_arguments(
                RetentionArguments(replay_share=0.2, replay_prompts=str(path)), SimpleNamespace(deepspeed=None), "sft"
            )
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(RecipeError, match="`replay_share` and `anchor_weight` are not supported under DeepSpeed"):
        check_retention_arguments(RetentionArguments(replay_share=0.2), SimpleNamespace(deepspeed=None), "sft")


@pytest.mark.slow
def test_sft_with_replay_trains_on_the_base_answers_and_a_resumed_run_reuses_them(assets, tmp_path):
    model_dir, prompts, firsts = base_that_ends_some_replies(assets["model"], tmp_path)
    output_dir = tmp_path / "replay"
    args = common_args(model_dir, assets["sft"], output_dir, steps=4)
    args += recipe_flags(replay_share=0.2, replay_prompts=prompts, replay_answer_tokens=4)
    result = launch("sft.py", args)
    check_ok(result)
    metrics = run_summary(output_dir)["metrics"]
    task_rows = round(48 * 0.9)  # the demo split: 10% held out
    finished = sum(f == firsts[0] for f in firsts)
    assert metrics["replay/rows"] == replay_row_count(0.2, task_rows) == 11
    assert metrics["replay/distinct_prompts"] == finished
    assert metrics["replay/unfinished_answers_dropped"] == len(PROMPTS) - finished
    assert "replay/rows: 11" in result.stdout
    stored = json.loads((output_dir / REPLAY_FILE).read_text())
    assert [a["prompt"] for a in stored["answers"]] == PROMPTS
    assert metrics["replay/share"] == pytest.approx(11 / 54)  # 43 task rows and 11 replay rows

    # the stored answers are what a later run with the same prompts, base and budget trains on (not generated again);
    # other prompts or another budget generate them anew
    stored["answers"][0]["answer"] = "a marked answer"
    (output_dir / REPLAY_FILE).write_text(json.dumps(stored))
    again = launch("sft.py", args + recipe_flags(overwrite_output_dir=True))
    check_ok(again)
    assert "a marked answer" in (output_dir / REPLAY_FILE).read_text()
    other = launch("sft.py", args + recipe_flags(overwrite_output_dir=True, replay_answer_tokens=5))
    check_ok(other)
    assert "a marked answer" not in (output_dir / REPLAY_FILE).read_text()


def test_replay_answers_are_reused_from_the_output_folder_or_the_run_continued(tmp_path, monkeypatch):
    prompts = write_jsonl([{"prompt": p} for p in PROMPTS], tmp_path / "prompts.jsonl")
    calls = []

    def generate(model, tokenizer, asked, max_new_tokens):
        calls.append(max_new_tokens)
        return [{"prompt": p, "answer": f"answer {len(calls)}", "finished": True} for p in asked]

    monkeypatch.setattr(replay, "base_replay_answers", generate)
    args = RetentionArguments(anchor_weight=1.0, replay_prompts=str(prompts), replay_answer_tokens=8)
    first = replay.replay_answers(args, None, None, tmp_path / "sft", "tiny", lambda desc: nullcontext())
    assert calls == [8] and first[0]["answer"] == "answer 1"
    assert replay.replay_answers(args, None, None, tmp_path / "sft", "tiny", lambda desc: nullcontext()) == first
    # a stage continuing the SFT run's adapter takes its answers, and keeps a copy in its own folder
    later = replay.replay_answers(
        args, None, None, tmp_path / "dpo", "tiny", lambda desc: nullcontext(), earlier_run=str(tmp_path / "sft")
    )
    assert later == first and calls == [8]
    assert json.loads((tmp_path / "dpo" / REPLAY_FILE).read_text())["answers"] == first
    # another budget, or another base, asks the base again
    args.replay_answer_tokens = 16
    assert (
        replay.replay_answers(
            args, None, None, tmp_path / "x", "tiny", lambda desc: nullcontext(), earlier_run=str(tmp_path / "sft")
        )[0]["answer"]
        == "answer 2"
    )
    args.replay_answer_tokens = 8
    replay.replay_answers(
        args, None, None, tmp_path / "y", "other", lambda desc: nullcontext(), earlier_run=str(tmp_path / "sft")
    )
    assert calls == [8, 16, 8]


def test_replay_rows_take_the_form_of_prompt_completion_conversations_and_text_rows_refuse_replay():
    from goft.training.trainers.forgetting import check_data_type

    pairs = [
        {"prompt": [{"role": "user", "content": f"q{i}"}], "completion": [{"role": "assistant", "content": "a"}]}
        for i in range(6)
    ]
    task = Dataset.from_list(pairs)
    mixed, _ = mix_replay(task, [{"prompt": "b", "answer": "two", "finished": True}], 0.25)
    assert mixed.features == task.features and mixed[-1] == {
        "prompt": [{"role": "user", "content": "b"}],
        "completion": [{"role": "assistant", "content": "two"}],
    }
    keys = SimpleNamespace(replay_share=0.2, task_target_nll=None)
    check_data_type(keys, task)
    for rows, what in (
        ([{"text": "a note"}], "language modeling text (`text`)"),
        ([{"prompt": "2 + 2 =", "completion": " 4"}], "a prompt/completion pair of strings"),
    ):
        with pytest.raises(RecipeError, match=re.escape(f"but they are {what}; drop `replay_share`")):
            check_data_type(keys, Dataset.from_list(rows))
    with pytest.raises(RecipeError, match=re.escape("`assistant_only_loss: true` trains on the assistant's turns")):
        check_data_type(SimpleNamespace(replay_share=0, task_target_nll=None), Dataset.from_list(rows), "text", True)
    with pytest.raises(RecipeError, match=re.escape("language modeling rows (`text`) have no answer")):
        check_data_type(SimpleNamespace(replay_share=0, task_target_nll=1.0), Dataset.from_list([{"text": "a"}]))
