"""Checks run before anything is loaded that need more than a key's own value: the precision the hardware can run,
the rotation backend, the chat template and the data's layout. Whether the adapter fits the model's structure is
`goft.io.adapter_checks`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from goft.errors import RecipeError
from goft.rotation import backend as rotation_backend
from goft.training.parallel.processes import has_accelerator

GENERATION_MARKER = "{% generation %}"


def check_precision(training_args, model_args=None) -> None:
    """Mixed precision the hardware cannot run is refused: bf16 on a GPU without bf16, fp16 without a GPU."""
    wants_bf16 = bool(getattr(training_args, "bf16", False) or getattr(training_args, "bf16_full_eval", False))
    wants_fp16 = bool(getattr(training_args, "fp16", False) or getattr(training_args, "fp16_full_eval", False))
    wants_bf16 = wants_bf16 or getattr(model_args, "dtype", None) == "bfloat16"
    if torch.cuda.is_available():
        if wants_bf16 and not torch.cuda.is_bf16_supported():
            raise RecipeError(
                f"bf16 was requested, but this GPU ({torch.cuda.get_device_name()}) does not support "
                "bfloat16. Use `fp16: true` (and `dtype: float16`) instead, or train in fp32."
            )
        return
    if wants_fp16 and not has_accelerator():
        raise RecipeError(
            "fp16 mixed precision was requested, but this machine has no GPU; CPUs do not train in "
            "float16. Drop `fp16` (train in fp32) or use `bf16: true`."
        )


def check_rotation_backend() -> None:
    """``GOFT_ROTATION_KERNEL`` is a known value, and forced kernels can run here."""
    try:
        rotation_backend.check_requested_backend(torch.cuda.is_available())
    except ValueError as error:
        raise RecipeError(str(error)) from None


def is_conversational(dataset, columns: tuple[str, ...]) -> bool:
    """Whether the first row holds chat messages (lists of role/content dicts) in any of `columns`."""
    if len(dataset) == 0:
        return False
    row = dataset[0]
    return any(
        isinstance(row.get(column), list) and row[column] and isinstance(row[column][0], dict) for column in columns
    )


def chat_template_file_text(path: str | None) -> str | None:
    """The text of a `chat_template_path` that is a .jinja/.j2 file (the form TRL reads as the template), else None;
    a file that is not UTF-8 is an error naming it."""
    if not path or not os.path.isfile(path) or not path.endswith((".jinja", ".j2")):
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise RecipeError(
            f"`chat_template_path` {path!r} is not UTF-8 text (byte {error.start}). Re-encode it as UTF-8."
        ) from None


def check_inline_chat_template(template, template_path: str | None) -> None:
    """alignment-handbook's inline `chat_template`: not empty, and not beside TRL's `chat_template_path` (whether it
    renders is checked with the tokenizer, `check_chat_template`)."""
    if template is None:
        return
    if template_path:
        raise RecipeError(
            "Both `chat_template` (an inline template) and `chat_template_path` are given; keep one of the two."
        )
    if not template.strip():
        raise RecipeError("`chat_template` is empty; give the Jinja template, or drop the key.")


def check_chat_template(
    tokenizer,
    model_name: str,
    conversational: bool,
    assistant_only_loss: bool,
    template_file: str | None = None,
    inline: bool = False,
) -> None:
    """Conversational data needs a chat template that renders a plain conversation; assistant-only loss needs one
    with generation markers. `template_file`: the path of a template file that replaces the tokenizer's; `inline`:
    the tokenizer's template is the recipe's `chat_template`."""
    template = chat_template_file_text(template_file) if template_file else tokenizer.chat_template
    owner = f"`chat_template_path` {template_file!r}" if template_file else f"The tokenizer of {model_name!r}"
    owner = "The recipe's `chat_template`" if inline else owner
    if conversational and not template:
        raise RecipeError(
            f"{owner} has no chat template, and this dataset is conversational (lists of role/content "
            "messages). Use a chat/instruct model, or give a template with `chat_template_path` (SFT)."
        )
    if conversational:
        _check_template_renders(tokenizer, template, owner)
    if assistant_only_loss and (not isinstance(template, str) or GENERATION_MARKER not in template):
        raise RecipeError(
            f"`assistant_only_loss: true` needs a chat template with `{GENERATION_MARKER}` markers "
            f"around the assistant's text, and the template of {owner[0].lower() + owner[1:]} has none "
            "(goft adds them for SmolLM2 only). Give such a template with `chat_template_path`, or "
            "drop `assistant_only_loss`."
        )


SAMPLE_CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello?"},
    {"role": "assistant", "content": "Hello."},
]


def _check_template_renders(tokenizer, template: str, owner: str) -> None:
    """The chat template renders a plain conversation (with or without a system turn): a template with a syntax
    error, or one that rejects such a conversation, is an error before loading rather than a traceback later."""
    failures = []
    for conversation in (SAMPLE_CONVERSATION[1:], SAMPLE_CONVERSATION):
        try:
            tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False)
            return
        except Exception as error:  # jinja's TemplateError, or the template's own raise_exception
            failures.append(f"{type(error).__name__}: {error}")
    raise RecipeError(
        f"The chat template of {owner[0].lower() + owner[1:]} fails on a plain user/assistant "
        f"conversation ({failures[0]}). Fix the template (`chat_template_path`) or use the model's own."
    )
