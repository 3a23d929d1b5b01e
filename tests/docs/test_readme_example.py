"""The README's Python example, and the longer one of the docs' home page, run as written, on a local tiny model
standing in for the Hub id."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tests.support.models import tiny_model

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
EXAMPLES = [README, REPO / "docs" / "index.md"]


def python_example(page: Path = README) -> str:
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    return next(block for block in blocks if "get_peft_model" in block and "save_pretrained" in block)


def test_the_readme_has_one_python_example():
    assert len(re.findall(r"```python\n", README.read_text())) == 1


def make_local_model(folder: Path) -> None:
    words = ["orthogonal", "fine-tuning", "keeps", "what", "the", "model", "already", "knows"]
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)
    tiny_model("llama", seed=None).save_pretrained(folder)


@pytest.mark.slow
@pytest.mark.parametrize("page", EXAMPLES, ids=lambda page: str(page.relative_to(REPO)))
def test_the_example_runs(tmp_path, page):
    model_dir = tmp_path / "local-model"
    make_local_model(model_dir)
    code = python_example(page)
    assert 'model_id = "HuggingFaceTB/SmolLM2-135M-Instruct"' in code
    code = code.replace('"HuggingFaceTB/SmolLM2-135M-Instruct"', repr(str(model_dir)))
    code += (
        "\nassert goft.orthogonality_error(model) <= 1e-5"
        "\nfrom safetensors.torch import load_file"
        "\nassert any(bool(t.abs().sum() > 0) for t in load_file('smollm2-goft/adapter_model.safetensors').values())"
        "\nprint('README-EXAMPLE-OK')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert "README-EXAMPLE-OK" in result.stdout, result.stderr[-3000:]
    assert (tmp_path / "smollm2-goft" / "adapter_model.safetensors").exists()
