import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import tempfile  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# the base models' replies are kept in a folder of this test session's own, never in the user's cache (subprocesses
# inherit it); tests that check the store set their own;
os.environ["GOFT_REFERENCE_CACHE"] = tempfile.mkdtemp(prefix="goft-base-replies-")
# likewise the dequantized copies of GGUF models: made once per test session
os.environ["GOFT_DEQUANTIZED_CACHE"] = tempfile.mkdtemp(prefix="goft-dequantized-")

if not torch.cuda.is_available():  # the Triton kernels' tests run on CPU tensors through Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import goft  # noqa: E402,F401  (registers the method)

from .support.data import dpo_rows, sft_rows, write_jsonl  # noqa: E402
from .support.models import save_tiny_chat_model, tiny_model  # noqa: E402


@pytest.fixture
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture
def tiny_gpt2():
    return tiny_model("gpt2")


@pytest.fixture
def input_ids():
    return torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def no_hub_datasets(monkeypatch):
    """Local data never reaches the Hub: loading a Hub dataset fails loudly unless the test stands one in."""
    from goft.data import loading as data_module

    real = data_module.load_dataset

    def local_only(path, *args, **kwargs):
        assert path in ("json", "csv", "parquet"), f"tried {path!r} as a Hub dataset"
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data_module, "load_dataset", local_only)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The recipe tests' inputs, one set per test module: the tiny chat model saved like a Hub checkpoint, and 48 SFT
    and 48 DPO rows. `root` is the module's folder for runs that tests share."""
    root = tmp_path_factory.mktemp("recipes")
    model = save_tiny_chat_model(root / "tiny-llama")
    return {
        "root": root,
        "model": model,
        "sft": write_jsonl(sft_rows(), root / "sft.jsonl"),
        "dpo": write_jsonl(dpo_rows(), root / "dpo.jsonl"),
    }
