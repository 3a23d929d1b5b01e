"""Givens as a peft method: registration, save/load, several adapters, merging, training."""

import importlib
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import PeftType
from safetensors.torch import load_file

import goft
from goft import GivensConfig, orthogonality_error, orthogonality_penalty
from goft.tuners.givens.layer import GivensLayer
from goft.tuners.sorsa import SorsaConfig
from tests.support.models import tiny_model
from tests.support.training import train_steps

LLAMA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_registration_is_idempotent():
    assert PeftType("GIVENS") is PeftType.GIVENS is goft.GIVENS
    names = list(PeftType.__members__)
    importlib.reload(importlib.import_module("goft.registration"))
    importlib.reload(goft)
    assert list(PeftType.__members__) == names
    assert names.count("GIVENS") == 1
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.GIVENS] is goft.GivensConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.GIVENS] is goft.GivensModel


def test_fresh_adapter_leaves_logits_unchanged(tiny_llama, input_ids):
    before = logits(tiny_llama, input_ids)
    model = get_peft_model(tiny_llama, GivensConfig())
    assert torch.equal(logits(model, input_ids), before)


def test_default_targets_and_trainable_parameter_count(tiny_llama, capsys):
    model = get_peft_model(tiny_llama, GivensConfig())
    layers = {name: m for name, m in model.named_modules() if isinstance(m, GivensLayer)}
    assert {name.rsplit(".", 1)[-1] for name in layers} == LLAMA_TARGETS
    expected = sum(layer.in_features - 1 for layer in layers.values())  # d − 1 per strict layer
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == expected == 2 * (6 * (72 - 1) + (100 - 1))
    model.print_trainable_parameters()
    assert f"trainable params: {expected:,}" in capsys.readouterr().out


def test_layers_to_transform_and_modules_to_save(tiny_llama):
    config = GivensConfig(target_modules=sorted(LLAMA_TARGETS), layers_to_transform=[1], modules_to_save=["lm_head"])
    model = get_peft_model(tiny_llama, config)
    adapted = [name for name, m in model.named_modules() if isinstance(m, GivensLayer)]
    assert len(adapted) == 7 and all(".layers.1." in name for name in adapted)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lm_head" in n for n in trainable)


def test_all_linear_excludes_the_output_head(tiny_llama):
    model = get_peft_model(tiny_llama, GivensConfig(target_modules="all-linear"))
    adapted = [name for name, m in model.named_modules() if isinstance(m, GivensLayer)]
    assert len(adapted) == 14 and not any("lm_head" in name for name in adapted)
    with pytest.raises(ValueError, match="layers_to_transform cannot be combined"):
        GivensConfig(target_modules="all-linear", layers_to_transform=[0])


def test_unknown_architecture_needs_target_modules():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.config = {"model_type": "mystery"}
    with pytest.raises(ValueError, match="no default target_modules for model type 'mystery'"):
        get_peft_model(model, GivensConfig())


def test_gpt2_conv1d_model(tiny_gpt2, input_ids):
    config = GivensConfig(init_weights=False)
    model = get_peft_model(tiny_gpt2, config)
    assert sum(isinstance(m, GivensLayer) for m in model.modules()) == 2 * 4  # c_attn, c_proj (x2), c_fc
    adapted = logits(model, input_ids)
    merged = model.merge_and_unload()
    assert torch.allclose(logits(merged, input_ids), adapted, atol=1e-4)


@pytest.mark.slow
def test_save_and_load_in_a_fresh_process(tmp_path, tiny_llama, input_ids):
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_llama.save_pretrained(base_dir)
    model = get_peft_model(tiny_llama, GivensConfig(init_weights=False))
    expected = logits(model, input_ids)
    model.save_pretrained(adapter_dir)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter_dir.iterdir()}
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["peft_type"] == "GIVENS"
    state = load_file(adapter_dir / "adapter_model.safetensors")
    assert len(state) == 14 and all(".givens_angles" in key for key in state)
    torch.save({"ids": input_ids, "logits": expected}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch
        IMPORT_GOFT
        from peft import PeftModel
        from transformers import LlamaForCausalLM
        base = LlamaForCausalLM.from_pretrained({str(base_dir)!r})
        model = PeftModel.from_pretrained(base, {str(adapter_dir)!r}).eval()
        ref = torch.load({str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            out = model(ref["ids"]).logits
        assert torch.allclose(out, ref["logits"], atol=1e-5), (out - ref["logits"]).abs().max()
        print("RELOADED-OK")
        """
    )
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    run = lambda code: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)  # noqa: E731
    with_goft = run(script.replace("IMPORT_GOFT", "import goft"))
    assert "RELOADED-OK" in with_goft.stdout, with_goft.stderr[-3000:]
    without = run(script.replace("IMPORT_GOFT", ""))
    assert without.returncode != 0 and "GIVENS" in without.stderr, without.stderr[-3000:]


def test_several_adapters_set_disable_delete(tiny_llama, input_ids):
    base = logits(tiny_llama, input_ids)
    model = get_peft_model(tiny_llama, GivensConfig(init_weights=False), adapter_name="a")
    out_a = logits(model, input_ids)
    model.add_adapter("b", GivensConfig(strict=False, quasi=True, init_weights=False))
    assert torch.equal(logits(model, input_ids), out_a)  # adding does not activate
    model.set_adapter("b")
    out_b = logits(model, input_ids)
    assert not torch.allclose(out_b, out_a, atol=1e-3) and not torch.allclose(out_b, base, atol=1e-3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".givens_blocks.b" in n for n in trainable)
    with model.disable_adapter():
        assert torch.equal(logits(model, input_ids), base)
    assert torch.equal(logits(model, input_ids), out_b)
    model.set_adapter("a")
    assert torch.equal(logits(model, input_ids), out_a)
    model.delete_adapter("b")
    assert "b" not in model.peft_config
    assert not any(".b" in n.rsplit("givens_", 1)[-1] for n, _ in model.named_parameters() if "givens_" in n)
    assert torch.equal(logits(model, input_ids), out_a)


def test_two_active_adapters_merge_consistently(tiny_llama, input_ids):
    model = get_peft_model(tiny_llama, GivensConfig(init_weights=False), adapter_name="a")
    model.add_adapter("b", GivensConfig(init_weights=False))
    model.base_model.set_adapter(["a", "b"])
    both = logits(model, input_ids)
    model.merge_adapter()
    assert torch.allclose(logits(model, input_ids), both, atol=1e-5)
    model.unmerge_adapter()
    assert torch.allclose(logits(model, input_ids), both, atol=1e-5)


@pytest.mark.parametrize(
    "config",
    [GivensConfig(init_weights=False), GivensConfig(strict=False, quasi=True, scaling=True, init_weights=False)],
    ids=["strict", "quasi+scaled"],
)
def test_merge_and_unload_and_unload(config, input_ids):
    base_model = tiny_model("llama", seed=0)
    base = logits(base_model, input_ids)
    model = get_peft_model(base_model, config)
    adapted = logits(model, input_ids)
    merged = model.merge_and_unload(safe_merge=True)
    assert not any(isinstance(m, GivensLayer) for m in merged.modules())
    assert torch.allclose(logits(merged, input_ids), adapted, atol=1e-5)

    other = get_peft_model(tiny_model("llama", seed=0), config)
    plain = other.unload()
    assert not any(isinstance(m, GivensLayer) for m in plain.modules())
    assert torch.equal(logits(plain, input_ids), base)


def test_training_reduces_loss_touches_only_adapter_and_stays_orthogonal(tiny_llama):
    torch.manual_seed(0)
    model = get_peft_model(tiny_llama, GivensConfig())
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ids = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(3))
    losses = train_steps(model, 15, lr=5e-2, ids=ids)
    assert losses[-1] < losses[0] - 0.05
    for name, value in frozen.items():
        assert torch.equal(dict(model.named_parameters())[name], value), name
    assert all(not torch.equal(dict(model.named_parameters())[n], v) for n, v in adapter.items())
    assert 0.0 < orthogonality_error(model) <= 1e-5


def test_orthogonality_helpers(tiny_llama):
    model = get_peft_model(tiny_llama, GivensConfig(init_weights=False), adapter_name="strict")
    assert orthogonality_error(model) <= 1e-5
    assert orthogonality_penalty(model).item() == 0.0  # strict adapters contribute nothing
    model.add_adapter(
        "quasi", GivensConfig(strict=False, quasi=True, init_weights=False, orthogonality_penalty_weight=0.5)
    )
    model.set_adapter("quasi")
    penalty = orthogonality_penalty(model)
    blocks = [p for n, p in model.named_parameters() if ".givens_blocks.quasi" in n]
    expected = sum(0.5 * (m[:, 0, 0] * m[:, 0, 1] + m[:, 1, 0] * m[:, 1, 1]).pow(2).sum() for m in blocks)
    assert penalty.item() > 0 and torch.allclose(penalty, expected)
    penalty.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in blocks)
    with model.disable_adapter():
        assert orthogonality_penalty(model).item() == 0.0
    assert orthogonality_error(model) <= 1e-5  # only angle-only adapters are measured
    assert orthogonality_error(model, adapter_name="quasi") == 0.0
    model.add_adapter("scaled", GivensConfig(strict=False, scaling=True, init_weights=False))
    assert orthogonality_error(model, adapter_name="scaled") == 0.0  # GOFT* is not orthogonal: not measured
    assert orthogonality_error(model, adapter_name="strict") > 0.0


@pytest.mark.parametrize(
    "make_config",
    [
        lambda: GivensConfig(task_type="CAUSAL_LM"),
        lambda: GivensConfig(task_type="CAUSAL_LM", strict=False, quasi=True),
        lambda: SorsaConfig(task_type="CAUSAL_LM", r=4),
    ],
    ids=["givens", "qgoft", "sorsa"],
)
def test_layers_keep_peft_layer_contract_like_lora(tmp_path, make_config):
    """Every goft layer exposes `in_features`/`out_features` of the layer it wraps (Linear and Conv1D), and loading
    a second adapter with `is_trainable=True` leaves the parameters trainable exactly where peft's LoRA does."""
    from transformers.pytorch_utils import Conv1D

    def requires_grad_by_adapter(config):
        saved = get_peft_model(tiny_model("llama", seed=0), config)
        folder = tmp_path / type(config).__name__
        saved.save_pretrained(folder)
        model = PeftModel.from_pretrained(tiny_model("llama", seed=None), folder, is_trainable=True)
        model.load_adapter(folder, adapter_name="other", is_trainable=True)
        return {
            name: {p.requires_grad for n, p in model.named_parameters() if f".{name}" in n}
            for name in ("default", "other")
        }, model

    goft_flags, model = requires_grad_by_adapter(make_config())
    lora_flags, _ = requires_grad_by_adapter(LoraConfig(task_type="CAUSAL_LM", r=4))
    assert goft_flags == lora_flags and goft_flags["default"] == {True}
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    assert (layer.in_features, layer.out_features) == (100, 72)
    if isinstance(make_config(), SorsaConfig):
        return  # SORSA adapts nn.Linear only
    gpt2 = get_peft_model(tiny_model("gpt2", seed=None, n_layer=1, n_positions=1024), make_config())
    attention = gpt2.base_model.model.transformer.h[0].attn.c_attn
    assert isinstance(attention.get_base_layer(), Conv1D)
    assert (attention.in_features, attention.out_features) == (48, 144)
