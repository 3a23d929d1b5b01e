"""recipes/merge.py: a saved adapter becomes a standalone model that plain transformers loads."""

import os

import pytest
import torch
from peft import get_peft_model
from transformers import LlamaForCausalLM

from goft import GivensConfig
from goft.errors import RecipeError
from goft.training.publish.merging import merge_adapter_to_model
from tests.support.models import tiny_config
from tests.support.recipes import REPO, recipe_flags, run_script


@pytest.fixture
def trained_adapter(tmp_path, tiny_llama, input_ids):
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_llama.save_pretrained(base_dir)
    model = get_peft_model(tiny_llama, GivensConfig(init_weights=False))
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(adapter_dir)
    with torch.no_grad():
        expected = model(input_ids).logits
    return base_dir, adapter_dir, expected


@pytest.mark.slow
def test_merge_script_writes_a_plain_model(tmp_path, trained_adapter, input_ids):
    _, adapter_dir, expected = trained_adapter
    out = tmp_path / "merged"
    flags = recipe_flags(adapter_path=adapter_dir, output_dir=out)
    result = run_script("merge.py", flags, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    merged = LlamaForCausalLM.from_pretrained(out).eval()  # no goft, no peft
    with torch.no_grad():
        assert torch.allclose(merged(input_ids).logits, expected, atol=1e-5)


def test_merge_refuses_to_overwrite_and_bad_paths(tmp_path, trained_adapter):
    base_dir, adapter_dir, _ = trained_adapter
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("user data")
    with pytest.raises(RecipeError, match="not empty"):
        merge_adapter_to_model(adapter_dir, occupied)
    assert (occupied / "keep.txt").read_text() == "user data"
    with pytest.raises(RecipeError, match="no adapter_config.json"):
        merge_adapter_to_model(base_dir, tmp_path / "new")
    with pytest.raises(RecipeError, match="`dtype` must be one of"):
        merge_adapter_to_model(adapter_dir, tmp_path / "new", dtype="fp8")
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_merge_script_refuses_an_adapter_for_another_base(tmp_path, trained_adapter):
    """A base of another width is refused with the tensors that do not fit, before its weights are loaded."""
    _, adapter_dir, _ = trained_adapter
    wider = tmp_path / "wider-base"
    config = tiny_config("llama")
    config.hidden_size += 8  # 80: still divisible by the heads
    config.save_pretrained(wider)
    out = tmp_path / "merged"
    flags = recipe_flags(adapter_path=adapter_dir, output_dir=out, base_model=wider)
    result = run_script("merge.py", flags, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "does not fit the base" in result.stderr and "in the adapter" in result.stderr
    assert not out.exists()
