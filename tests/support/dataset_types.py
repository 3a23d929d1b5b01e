"""A row maker for each dataset type TRL documents, per stage, with what goft normalises its rows to: shared by the
data tests and the recipe runs on each type."""

from goft.data.stages import DPO, SFT


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def chat(i, answer=None):
    return [user(f"question {i}"), assistant(answer or f"answer {i}")]


# stage, rows of each type (extra columns included), the columns once normalised, a normalised row
TYPES = {
    "sft-language-modeling": (
        SFT,
        lambda i: {"text": f"The note number {i}.", "id": i},
        ["text"],
        {"text": "The note number 0."},
    ),
    "sft-conversational": (SFT, lambda i: {"messages": chat(i), "source": "x"}, ["messages"], {"messages": chat(0)}),
    "sft-ultrachat": (  # `prompt` and `prompt_id` beside `messages` are extra columns
        SFT,
        lambda i: {"prompt": f"question {i}", "prompt_id": f"id{i}", "messages": chat(i)},
        ["messages"],
        {"messages": chat(0)},
    ),
    "sft-prompt-completion-standard": (
        SFT,
        lambda i: {"prompt": f"{i} + {i} =", "completion": f" {2 * i}", "score": 1.0},
        ["prompt", "completion"],
        {"prompt": "0 + 0 =", "completion": " 0"},
    ),
    "sft-prompt-completion-conversational": (
        SFT,
        lambda i: {"prompt": [user(f"question {i}")], "completion": [assistant(f"answer {i}")]},
        ["prompt", "completion"],
        {"prompt": [user("question 0")], "completion": [assistant("answer 0")]},
    ),
    "sft-tools-kept": (
        SFT,
        lambda i: {"messages": chat(i), "chat_template_kwargs": {"mode": "x"}, "id": i},
        ["messages", "chat_template_kwargs"],
        {"messages": chat(0), "chat_template_kwargs": {"mode": "x"}},
    ),
    "dpo-explicit-standard": (
        DPO,
        lambda i: {"prompt": f"The sky {i} is", "chosen": " blue.", "rejected": " green.", "score_chosen": 9},
        ["prompt", "chosen", "rejected"],
        {"prompt": "The sky 0 is", "chosen": " blue.", "rejected": " green."},
    ),
    "dpo-explicit-conversational": (
        DPO,
        lambda i: {"prompt": [user(f"q{i}")], "chosen": [assistant("yes")], "rejected": [assistant("no")]},
        ["prompt", "chosen", "rejected"],
        {"prompt": [user("q0")], "chosen": [assistant("yes")], "rejected": [assistant("no")]},
    ),
    "dpo-implicit-standard": (
        DPO,
        lambda i: {"chosen": f"The sky {i} is blue.", "rejected": f"The sky {i} is green."},
        ["prompt", "chosen", "rejected"],
        {"prompt": "The sky 0 is", "chosen": " blue.", "rejected": " green."},
    ),
    "dpo-implicit-conversational": (
        DPO,
        lambda i: {"chosen": chat(i, "yes"), "rejected": chat(i, "no")},
        ["prompt", "chosen", "rejected"],
        {"prompt": [user("question 0")], "chosen": [assistant("yes")], "rejected": [assistant("no")]},
    ),
    "dpo-ultrafeedback": (  # a string prompt beside conversations that repeat it: the prompt comes from them
        DPO,
        lambda i: {
            "prompt": f"question {i}",
            "prompt_id": f"id{i}",
            "chosen": chat(i, "yes"),
            "rejected": chat(i, "no"),
            "score_chosen": 8.0,
            "score_rejected": 2.0,
        },
        ["prompt", "chosen", "rejected"],
        {"prompt": [user("question 0")], "chosen": [assistant("yes")], "rejected": [assistant("no")]},
    ),
}
