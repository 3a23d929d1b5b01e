"""Givens adapters on bitsandbytes 4-bit and 8-bit bases (bitsandbytes runs on CPU here)."""

import warnings

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

import goft
from goft.rotation.givens import rotate_weight
from goft.tuners.givens.layer import GivensLayer
from goft.tuners.quantized import quantization_kind, read_weight
from tests.support.models import tiny_model
from tests.support.training import train_steps

pytest.importorskip("bitsandbytes")

QUANTIZATIONS = {
    "nf4": dict(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        bnb_4bit_quant_storage=torch.float32,
    ),
    "nf4-double": dict(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    ),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=torch.float32),
    "int8": dict(load_in_8bit=True),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-128")
    tiny_model(hidden_size=128, intermediate_size=192).save_pretrained(folder)
    return folder


def load_quantized(model_dir, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, quantization_config=BitsAndBytesConfig(**QUANTIZATIONS[name])
        )


def raw_bytes(tensor):
    """Bitwise content (packed 4-bit storage viewed as floats may hold NaN patterns, which never compare equal)."""
    return tensor.detach().contiguous().view(torch.uint8).clone()


def requantized(layer, weight):
    """`weight` quantized and dequantized by a fresh layer with `layer`'s quantization settings."""
    import bitsandbytes as bnb

    old = layer.weight
    if quantization_kind(layer) == "4bit":
        data, state = bnb.functional.quantize_4bit(
            weight.to(old.quant_state.dtype),
            blocksize=old.blocksize,
            compress_statistics=old.compress_statistics,
            quant_type=old.quant_type,
            quant_storage=old.quant_storage,
        )
        return bnb.functional.dequantize_4bit(data, state).float()
    int8, scales, _ = bnb.functional.int8_vectorwise_quant(weight.to(torch.float16))
    return bnb.functional.int8_vectorwise_dequant(int8, scales).float()


def givens_layers(model):
    return [m for m in model.modules() if isinstance(m, GivensLayer)]


@pytest.mark.parametrize("name", list(QUANTIZATIONS))
def test_training_on_a_quantized_base(model_dir, name):
    model = get_peft_model(load_quantized(model_dir, name), goft.GivensConfig())
    layers = givens_layers(model)
    assert layers and all(quantization_kind(layer.get_base_layer()) for layer in layers)
    frozen = {n: raw_bytes(p) for n, p in model.named_parameters() if not p.requires_grad}
    ids = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(3))
    losses = train_steps(model, 8, lr=2e-2, ids=ids)
    assert losses[-1] < losses[0] - 0.05, losses
    assert goft.orthogonality_error(model) <= 1e-5
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(raw_bytes(p), frozen[n]), n  # the quantized base (and all else frozen) is untouched
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", list(QUANTIZATIONS))
def test_merge_into_a_quantized_layer_applies_the_rotation(model_dir, name):
    model = get_peft_model(load_quantized(model_dir, name), goft.GivensConfig(init_weights=False))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    base = layer.get_base_layer()
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        adapter_out = layer(x)  # an eval-mode no-grad forward: bitsandbytes would repack 4-bit weights here
    dequantized = read_weight(base).clone()  # W, as the quantized layer computes with it
    blocks, _ = layer.rotation_blocks("default")
    rotated = rotate_weight(dequantized.double(), blocks.detach().double(), True).float()  # W Rᵀ, exactly
    reference = x @ rotated.t()
    tolerance = 2e-2 if name == "int8" else 1e-2  # the CPU kernels round activations (bf16 / int8)
    assert (adapter_out - reference).norm() / reference.norm() < tolerance

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer.merge()
    assert any("re-quantizes" in str(w.message) for w in caught)
    assert quantization_kind(base) is not None  # still a quantized layer
    merged = read_weight(base)
    # the merged weight is exactly W Rᵀ quantized once more with the layer's own settings ...
    in_fp32 = layer.merged_weight(dequantized, "default")  # the merge's own fp32 W Rᵀ, equal to the exact one:
    torch.testing.assert_close(in_fp32, rotated, rtol=0, atol=1e-5)
    expected = requantized(base, in_fp32)
    torch.testing.assert_close(merged, expected, rtol=0, atol=1e-6)
    # ... which is far from W: the rotation was not dropped (peft's OFT bnb merge has that bug)
    quantization_error = (merged - rotated).norm() / rotated.norm()
    rotation_size = (merged - dequantized).norm() / rotated.norm()
    assert rotation_size > 2 * quantization_error, (rotation_size, quantization_error)
    with torch.no_grad():
        merged_out = layer(x)  # merged: the base alone computes the rotated layer
    assert (merged_out - reference).norm() / reference.norm() < quantization_error + tolerance + 1e-3


@pytest.mark.parametrize("name", ["nf4", "int8"])
def test_merge_and_unload_on_a_quantized_model(model_dir, name):
    model = get_peft_model(load_quantized(model_dir, name), goft.GivensConfig(init_weights=False))
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged_model = model.merge_and_unload()
    assert not givens_layers(merged_model)
    with torch.no_grad():
        merged = merged_model(input_ids=ids).logits
    # the merged model follows the adapter, not the base: the residual is quantization error only
    assert (merged - adapted).norm() < 0.5 * (base - adapted).norm()


def test_recipe_quantization_defaults():
    from goft.io.model_source import quantization_config
    from goft.training.arguments.fields import ModelArguments

    assert quantization_config(ModelArguments()) is None
    config = quantization_config(ModelArguments(load_in_4bit=True, dtype="bfloat16", use_bnb_nested_quant=True))
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.bnb_4bit_quant_storage == torch.bfloat16  # so that ZeRO-3 can shard the 4-bit weights
    assert config.bnb_4bit_use_double_quant and config.bnb_4bit_quant_type == "nf4"
    config = quantization_config(
        ModelArguments(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_quant_storage="uint8")
    )
    assert config.bnb_4bit_compute_dtype == torch.float32 and config.bnb_4bit_quant_storage == torch.uint8
    assert quantization_config(ModelArguments(load_in_8bit=True)).load_in_8bit


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--load_in_4bit", "--load_in_8bit"])
def test_sft_recipe_on_a_quantized_base(tmp_path, flag):
    import json

    from tests.support.data import sft_rows, write_jsonl
    from tests.support.models import save_tiny_chat_model
    from tests.support.recipes import assert_falling, check_ok, common_args, launch, train_losses

    model = save_tiny_chat_model(tmp_path / "tiny")
    data = write_jsonl(sft_rows(), tmp_path / "sft.jsonl")
    output_dir = tmp_path / "out"
    check_ok(launch("sft.py", common_args(model, data, output_dir) + [flag, "true"]))
    assert_falling(train_losses(output_dir))
    summary = json.loads((output_dir / "goft_run.json").read_text())
    assert summary["metrics"]["orthogonality_error"] <= 1e-5
    assert f"{flag[2:]}: true" in (output_dir / "README.md").read_text()
    assert (output_dir / "adapter_model.safetensors").stat().st_size > 0


def test_bf16_adapter_weights_still_give_an_exact_rotation(tiny_llama):
    # TRL stores adapter weights in bf16 on quantized bases; the rotation is still built in fp32 and stays exact
    model = get_peft_model(tiny_llama, goft.GivensConfig(init_weights=False))
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.to(torch.bfloat16)
    assert goft.orthogonality_error(model) <= 1e-5
    x = torch.randn(3, 72, dtype=torch.bfloat16)
    layer = givens_layers(model)[0]
    out = layer.rotate_inputs(x, "default")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float().norm(dim=-1), x.float().norm(dim=-1), rtol=1e-2, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kept_copy", [True, False], ids=["kept-dequantized-copy", "temporary-copy"])
def test_the_embedded_gguf_model_loads_quantized(tmp_path, monkeypatch, kept_copy):
    """transformers refuses to quantize while it dequantizes GGUF; the recipe quantizes the kept dequantized copy
    (or, with that store off, a temporary one), and the 4-bit weights are then the GGUF model's own weights up to
    NF4's error."""
    import bitsandbytes.functional as bnb_functional

    from goft.io.model_source import load_causal_lm, quantization_config, resolve_model_source
    from goft.training.arguments.fields import ModelArguments

    if not kept_copy:
        monkeypatch.setenv("GOFT_DEQUANTIZED_CACHE", "off")
    source = resolve_model_source("smollm2-135m-instruct")
    assert source.gguf_file
    args = ModelArguments(model_name_or_path=source.name, load_in_4bit=True, dtype="float32")
    quantized = load_causal_lm(source, dtype="float32", quantization_config=quantization_config(args))
    plain = load_causal_lm(source, dtype="float32")
    assert quantized.name_or_path == "smollm2-135m-instruct"
    for name in ("q_proj", "o_proj"):
        layer = getattr(quantized.model.layers[3].self_attn, name)
        assert quantization_kind(layer) == "4bit"
        weight = bnb_functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
        want = getattr(plain.model.layers[3].self_attn, name).weight
        assert weight.shape == want.shape
        assert (weight - want).norm() <= 0.15 * want.norm(), name  # NF4's error, not other weights
