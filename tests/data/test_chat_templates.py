"""goft's training chat templates render exactly like the originals and mark the assistant's tokens."""

from goft.data.chat_templates import SMOLLM2_TEMPLATE, use_training_chat_template
from tests.support.models import chat_tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6"},
    ],
    [{"role": "user", "content": "only a question"}],
]


def test_smollm2_training_template_renders_identically_and_masks_the_assistant():
    tokenizer = chat_tokenizer()
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    originals = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=g)
        for c in CONVERSATIONS
        for g in (False, True)
    ]
    assert use_training_chat_template(tokenizer)
    patched = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=g)
        for c in CONVERSATIONS
        for g in (False, True)
    ]
    assert patched == originals
    encoded = tokenizer.apply_chat_template(CONVERSATIONS[1], return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    assistant_text = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert assistant_text == "4<|im_end|>6<|im_end|>"


def test_unknown_templates_are_left_alone():
    tokenizer = chat_tokenizer()
    before = tokenizer.chat_template
    assert not use_training_chat_template(tokenizer)
    assert tokenizer.chat_template == before
