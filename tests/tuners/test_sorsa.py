"""SORSA as a peft method: identity at init, merge equals forward, orthonormality regulariser, save/load."""

import subprocess
import sys

import pytest
import torch
from peft import get_peft_model

import goft
from goft import SorsaConfig, sorsa_orthonormality
from goft.tuners.sorsa import SorsaLayer
from tests.support.training import perturb, train_steps


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def sorsa_layers(model):
    return [m for m in model.modules() if isinstance(m, SorsaLayer)]


def test_initial_output_equals_the_base(tiny_llama, input_ids):
    before = logits(tiny_llama, input_ids)
    model = get_peft_model(tiny_llama, SorsaConfig(r=8))
    after = logits(model, input_ids)
    assert (after - before).abs().max() <= 1e-5 * max(before.abs().max().item(), 1.0)
    layer = sorsa_layers(model)[0]
    assert layer.sorsa_U["default"].shape == (layer.out_features, 8)
    assert layer.sorsa_Vh["default"].shape == (8, layer.in_features)
    # the trainable triplets are the top singular triplets of the (unchanged) base weight
    s = torch.linalg.svdvals(layer.get_base_layer().weight.float())
    torch.testing.assert_close(layer.sorsa_S["default"].detach(), s[:8])


def test_merge_equals_forward_and_unmerge_restores(tiny_llama, input_ids):
    model = get_peft_model(tiny_llama, SorsaConfig(r=8))
    perturb(model)
    base_weights = {
        n: m.get_base_layer().weight.detach().clone() for n, m in model.named_modules() if isinstance(m, SorsaLayer)
    }
    adapted = logits(model, input_ids)
    model.merge_adapter()
    merged = logits(model, input_ids)
    assert (merged - adapted).abs().max() <= 1e-5 * adapted.abs().max()
    model.unmerge_adapter()
    for name, module in model.named_modules():
        if isinstance(module, SorsaLayer):
            torch.testing.assert_close(module.get_base_layer().weight, base_weights[name], rtol=0, atol=1e-5)
    plain = model.merge_and_unload()
    assert not sorsa_layers(plain)
    assert (logits(plain, input_ids) - adapted).abs().max() <= 1e-5 * adapted.abs().max()


def test_regulariser_is_zero_at_init_and_its_gradient_flows(tiny_llama):
    model = get_peft_model(tiny_llama, SorsaConfig(r=8))
    assert sorsa_orthonormality(model).item() < 1e-5  # singular vectors start orthonormal
    perturb(model)
    reg = sorsa_orthonormality(model)
    assert reg.item() > 1e-3
    reg.backward()
    layer = sorsa_layers(model)[0]
    assert layer.sorsa_U["default"].grad.abs().sum() > 0 and layer.sorsa_Vh["default"].grad.abs().sum() > 0
    assert layer.sorsa_S["default"].grad is None or layer.sorsa_S["default"].grad.abs().sum() == 0  # S is free
    # a few steps on the regulariser alone restore orthonormality
    train_steps(model, 50, lr=0.05, loss=lambda: sorsa_orthonormality(model), optimizer=torch.optim.SGD)
    assert sorsa_orthonormality(model).item() < reg.item() / 4


def test_training_changes_only_the_triplets(tiny_llama, input_ids):
    model = get_peft_model(tiny_llama, SorsaConfig(r=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(any(k in n for k in ("sorsa_U", "sorsa_S", "sorsa_Vh")) for n in trainable)
    assert not any("sorsa_U0" in n or "sorsa_S0" in n for n in trainable)  # the initial triplets are frozen
    losses = train_steps(model, 10, lr=1e-2, ids=input_ids)
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_save_and_load_in_a_fresh_process(tiny_llama, input_ids, tmp_path):
    tiny_llama_dir = tmp_path / "base"
    tiny_llama.save_pretrained(tiny_llama_dir)
    model = get_peft_model(tiny_llama, SorsaConfig(r=8))
    perturb(model)
    expected = logits(model, input_ids)
    model.save_pretrained(tmp_path / "adapter")
    torch.save({"ids": input_ids, "expected": expected}, tmp_path / "expected.pt")
    script = f"""
import goft, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
data = torch.load({str(tmp_path / "expected.pt")!r})
base = AutoModelForCausalLM.from_pretrained({str(tiny_llama_dir)!r})
model = PeftModel.from_pretrained(base, {str(tmp_path / "adapter")!r})
with torch.no_grad():
    print((model(data["ids"]).logits - data["expected"]).abs().max().item())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split()[-1]) <= 1e-5 * expected.abs().max().item()


def test_bad_configs():
    with pytest.raises(ValueError, match="r >= 1"):
        SorsaConfig(r=0)
    with pytest.raises(ValueError, match="gamma"):
        SorsaConfig(gamma=-1.0)
    assert SorsaConfig().peft_type == goft.SORSA
