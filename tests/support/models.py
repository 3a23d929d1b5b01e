"""The one factory of tiny random models: their shapes and seeds live here, nowhere else.

`tiny_model("llama")` is the in-memory Llama of the unit tests (odd / non-power-of-two widths on purpose: 72 hidden,
100 MLP exercise the carry path); `tiny_model("gpt2")` the GPT-2 (Conv1D layers). Keywords change a size for the
tests that need another one (`tiny_model(hidden_size=128, intermediate_size=192)`). `save_tiny_chat_model` writes the
checkpoint the recipe tests load: a narrower Llama (48 hidden, 80 MLP) with a byte-level ChatML tokenizer.
"""

from contextlib import nullcontext
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

# keys of each architecture's config; `tiny_config` / `tiny_model` keywords override them
SHAPES = {
    "llama": dict(
        vocab_size=97,
        hidden_size=72,
        intermediate_size=100,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    ),
    "gpt2": dict(vocab_size=97, n_embd=48, n_layer=2, n_head=4, n_positions=64),
}
CLASSES = {"llama": (LlamaConfig, LlamaForCausalLM), "gpt2": (GPT2Config, GPT2LMHeadModel)}
# the recipe tests' chat model: the Llama above, narrower, with room for whole conversations
CHAT_SHAPE = dict(hidden_size=48, intermediate_size=80, max_position_embeddings=512)

# ChatML with {% generation %} markers, so that assistant-only loss works too.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class Block(nn.Module):
    """One layer, `proj`, as a model: what a tuner wraps in the layer tests."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.proj = layer

    def forward(self, x):
        return self.proj(x)


def tiny_config(arch: str = "llama", **changes) -> PretrainedConfig:
    """The config of the tiny `arch` ("llama" or "gpt2"), with `changes` to its keys."""
    config_class, _ = CLASSES[arch]
    return config_class(**{**SHAPES[arch], **changes})


def tiny_model(arch: str = "llama", seed: int | None = 0, device: str | None = None, **changes):
    """A tiny random `arch` model in eval mode, its weights drawn after `torch.manual_seed(seed)` (None: from torch's
    global generator as it stands); `device="meta"` builds it without weights."""
    config = tiny_config(arch, **changes)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device) if device else nullcontext():
        return CLASSES[arch][1](config).eval()


def chat_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer without merges (259 tokens) with the ChatML template above."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_chat_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer random Llama (hidden 48, MLP 80) and its chat tokenizer, saved into `folder` like a Hub checkpoint."""
    tokenizer = chat_tokenizer()
    config = tiny_config(
        "llama",
        **CHAT_SHAPE,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
