import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

import goft  # noqa: E402,F401  (registers the method)


def tiny_llama_config() -> LlamaConfig:
    # odd / non-power-of-two widths on purpose: 72 (hidden) and 100 (MLP) exercise the carry path
    return LlamaConfig(
        vocab_size=97,
        hidden_size=72,
        intermediate_size=100,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )


@pytest.fixture
def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


@pytest.fixture
def tiny_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=97, n_embd=48, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture
def input_ids():
    return torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def no_hub_datasets(monkeypatch):
    """Local data never reaches the Hub: loading a Hub dataset fails loudly unless the test stands one in."""
    from goft.training import data as data_module

    real = data_module.load_dataset

    def local_only(path, *args, **kwargs):
        assert path == "json", f"tried {path!r} as a Hub dataset"
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data_module, "load_dataset", local_only)
