"""Givens layers on Linear and Conv1D: merge equivalence, angle preservation, memory, dtypes, bad input."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from benchmarks.measure import saved_bytes
from goft import GivensConfig
from goft.rotation.givens import dense_rotation, rotate_rows_reference
from goft.tuners.givens.layer import GivensLayer
from tests.support.models import Block

MODES = {
    "strict": dict(),
    "quasi": dict(strict=False, quasi=True),
    "scaled": dict(strict=False, scaling=True),
    "quasi+scaled": dict(strict=False, quasi=True, scaling=True),
}


def make_base(kind: str, d: int, n: int, dtype=torch.float32) -> Block:
    torch.manual_seed(0)
    if kind == "linear":
        layer = nn.Linear(d, n, bias=True)
    else:
        layer = Conv1D(n, d)  # GPT-2 style: weight stored as (in, out)
        nn.init.normal_(layer.weight, std=0.2)
        nn.init.normal_(layer.bias, std=0.2)
    return Block(layer).to(dtype)


def adapted(kind, d, n, mode, dtype=torch.float32):
    config = GivensConfig(target_modules=["proj"], init_weights=False, **MODES[mode])
    return get_peft_model(make_base(kind, d, n, dtype), config)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("d", [7, 96, 130])
def test_adapter_output_equals_merged_output(kind, mode, d):
    model = adapted(kind, d, 33, mode)
    x = torch.randn(4, 5, d)
    base_weight = model.base_model.model.proj.get_base_layer().weight.detach().clone()
    with torch.no_grad():
        unmerged = model(x)
        model.merge_adapter()
        merged = model(x)
        assert rel_err(merged, unmerged) <= 1e-5
        model.unmerge_adapter()
        restored = model.base_model.model.proj.get_base_layer().weight
        assert (restored - base_weight).abs().max().item() <= 1e-5
        assert rel_err(model(x), unmerged) <= 1e-5


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_merge_formula_matches_method(kind):
    d, n = 40, 9
    model = adapted(kind, d, n, "strict")
    layer = model.base_model.model.proj
    W = layer.get_base_layer().weight.detach().double()
    W_nd = W.t() if kind == "conv1d" else W
    blocks, _ = layer.rotation_blocks("default")
    R = dense_rotation(blocks.detach().double(), d)
    model.merge_adapter()
    merged = layer.get_base_layer().weight.detach().double()
    if kind == "conv1d":
        assert torch.allclose(merged, R @ W_nd.t(), atol=1e-6)  # W_c ← R W_c
    else:
        assert torch.allclose(merged, W_nd @ R.t(), atol=1e-6)  # W ← W Rᵀ


def test_strict_adapter_preserves_angles_between_neurons():
    d, n = 300, 64
    model = adapted("linear", d, n, "strict")
    layer = model.base_model.model.proj
    W = layer.get_base_layer().weight.detach().double().clone()
    model.merge_adapter()
    rotated = layer.get_base_layer().weight.detach().double()
    assert (rotated - W).abs().max() > 1e-2  # the adapter really changed the weight
    cos = lambda m: (m / m.norm(dim=1, keepdim=True)) @ (m / m.norm(dim=1, keepdim=True)).t()  # noqa: E731
    assert (cos(rotated) - cos(W)).abs().max().item() <= 1e-5
    assert (rotated.norm(dim=1) - W.norm(dim=1)).abs().max().item() <= 1e-5


def test_quasi_adapter_does_not_preserve_angles():
    model = adapted("linear", 64, 32, "quasi")
    layer = model.base_model.model.proj
    W = layer.get_base_layer().weight.detach().clone()
    model.merge_adapter()
    rotated = layer.get_base_layer().weight.detach()
    cos = lambda m: (m / m.norm(dim=1, keepdim=True)) @ (m / m.norm(dim=1, keepdim=True)).t()  # noqa: E731
    assert (cos(rotated) - cos(W)).abs().max().item() > 1e-3


@pytest.mark.parametrize("mode", ["strict", "scaled"])
@pytest.mark.parametrize("d", [1024, 1000])
def test_saved_bytes_at_most_input_bytes(d, mode):
    model = adapted("linear", d, 512, mode)
    layer = model.base_model.model.proj
    weight = layer.get_base_layer().weight
    x = torch.randn(4, 256, d, requires_grad=True)
    input_bytes = x.numel() * x.element_size()
    ours = saved_bytes(lambda: model(x), [weight])
    assert input_bytes <= ours <= input_bytes + 64 * d  # the input, and O(d) for the angles
    # the counter is real: the stage-by-stage reference keeps ~one copy of x per stage
    blocks, _ = layer.rotation_blocks("default")
    naive = saved_bytes(lambda: layer.get_base_layer()(rotate_rows_reference(x, blocks)), [weight])
    assert naive > 3 * input_bytes


class SharedInput(nn.Module):
    """q, k and v read one input, as in attention."""

    def __init__(self, d):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d // 2), nn.Linear(d, d // 2)

    def forward(self, x):
        return self.q(x).sum() + self.k(x).sum() + self.v(x).sum()


def test_layers_sharing_an_input_share_what_they_save():
    """Each layer saves its input, not its rotated input: q/k/v keep one input-sized tensor, as LoRA's do."""
    torch.manual_seed(0)
    d = 256
    x = torch.randn(512, d, requires_grad=True)
    input_bytes = x.numel() * x.element_size()
    givens = get_peft_model(SharedInput(d), GivensConfig(target_modules=["q", "k", "v"]))
    lora = get_peft_model(SharedInput(d), LoraConfig(target_modules=["q", "k", "v"], r=16))
    frozen = lambda m: [p for p in m.parameters() if not p.requires_grad]  # noqa: E731
    ours, theirs = saved_bytes(lambda: givens(x), frozen(givens)), saved_bytes(lambda: lora(x), frozen(lora))
    assert input_bytes <= ours <= input_bytes + 3 * 64 * d
    assert ours < theirs  # LoRA also keeps x·A of every layer


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model(dtype):
    model = adapted("linear", 96, 40, "strict", dtype=dtype)
    layer = model.base_model.model.proj
    assert layer.givens_angles["default"].dtype == torch.float32  # adapter weights stay fp32
    x = torch.randn(3, 96, dtype=dtype)
    out = model(x)
    assert out.dtype == dtype
    with torch.no_grad():
        R = dense_rotation(layer.rotation_blocks("default")[0].detach(), 96)
        base = layer.get_base_layer()
        expected = (x.float() @ R) @ base.weight.float().t() + base.bias.float()
    assert rel_err(out.float(), expected) < 2e-2
    out.float().sum().backward()
    assert layer.givens_angles["default"].grad is not None


def test_safe_merge_refuses_broken_adapter_and_keeps_weight():
    model = adapted("linear", 20, 8, "quasi")
    layer = model.base_model.model.proj
    before = layer.get_base_layer().weight.detach().clone()
    with torch.no_grad():
        layer.givens_blocks["default"][2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaNs detected"):
        model.merge_adapter(safe_merge=True)
    assert torch.equal(layer.get_base_layer().weight, before)
    assert not layer.merged


def test_mixed_batch_adapter_names():
    model = adapted("linear", 30, 8, "strict")
    model.add_adapter("other", GivensConfig(target_modules=["proj"], init_weights=False))
    model.eval()
    x = torch.randn(3, 30)
    with torch.no_grad():
        mixed = model(x, adapter_names=["default", "__base__", "other"])
        model.set_adapter("default")
        a = model(x)
        model.set_adapter("other")
        b = model(x)
        with model.disable_adapter():
            base = model(x)
    assert torch.allclose(mixed[0], a[0], atol=1e-6)
    assert torch.allclose(mixed[1], base[1], atol=1e-6)
    assert torch.allclose(mixed[2], b[2], atol=1e-6)
    with pytest.raises(ValueError, match="non-existing adapter"):
        model(x, adapter_names=["default", "typo", "other"])


def test_config_refuses_strict_with_scaling_or_quasi():
    with pytest.raises(ValueError, match="strict=True.*cannot be combined with scaling.*strict=False"):
        GivensConfig(scaling=True)
    with pytest.raises(ValueError, match="cannot be combined with quasi"):
        GivensConfig(quasi=True)
    with pytest.raises(ValueError, match="orthogonality_penalty_weight must be >= 0"):
        GivensConfig(strict=False, quasi=True, orthogonality_penalty_weight=-1.0)
    assert GivensConfig().is_orthogonal
    assert not GivensConfig(strict=False, quasi=True).is_orthogonal
    assert not GivensConfig(strict=False, scaling=True).is_orthogonal


def test_layer_too_narrow_is_refused():
    model = Block(nn.Linear(1, 4))
    with pytest.raises(ValueError, match="at least 2 input features, this one has 1"):
        get_peft_model(model, GivensConfig(target_modules=["proj"]))


def test_unsupported_module_type_is_refused():
    model = Block(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="not supported by Givens adapters"):
        get_peft_model(model, GivensConfig(target_modules=["proj"]))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_backward_and_merge():
    model = adapted("linear", 520, 64, "strict").cuda()
    x = torch.randn(8, 520, device="cuda", requires_grad=True)
    out = model(x)
    out.sum().backward()
    layer = model.base_model.model.proj
    assert layer.givens_angles["default"].grad.device.type == "cuda"
    with torch.no_grad():
        model.merge_adapter()
        assert rel_err(model(x), out) <= 1e-5


def test_givens_layer_is_exported():
    model = adapted("linear", 10, 4, "strict")
    assert isinstance(model.base_model.model.proj, GivensLayer)


def test_max_angle_bounds_every_rotation_and_survives_save_and_load(tmp_path):
    from peft import PeftModel

    import goft

    bound = 0.05
    config = GivensConfig(target_modules=["proj"], max_angle=bound)
    model = get_peft_model(make_base("linear", 16, 8), config)
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.givens_angles["default"].fill_(50.0)  # tanh saturates: every angle sits at the bound
    blocks, exact = layer.rotation_blocks("default")
    assert exact
    torch.testing.assert_close(blocks[:, 1, 0], torch.full((15,), torch.sin(torch.tensor(bound)).item()))
    assert goft.orthogonality_error(model) < 1e-6
    x = torch.randn(3, 16)
    expected = model(x)
    model.save_pretrained(tmp_path / "bounded")
    loaded = PeftModel.from_pretrained(make_base("linear", 16, 8), tmp_path / "bounded")
    assert loaded.peft_config["default"].max_angle == bound
    torch.testing.assert_close(loaded(x), expected)
    merged = loaded.merge_and_unload()
    torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=0)
    for wrong in (0.0, -1.0, 3.5):
        with pytest.raises(ValueError, match=r"max_angle must be in \(0, pi\]"):
            GivensConfig(max_angle=wrong)
