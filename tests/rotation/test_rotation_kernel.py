"""The fused Triton rotation against the PyTorch path: on the GPU when there is one, else on CPU tensors under Triton's
interpreter (conftest sets TRITON_INTERPRET=1 when CUDA is absent)."""

from __future__ import annotations

import warnings

import pytest
import torch
from peft import get_peft_model

from goft import GivensConfig
from goft.rotation import backend as rotation_backend
from goft.rotation import fused as fused_rotation
from goft.rotation.backend import rotate_rows
from goft.rotation.fused import fused_rotate_rows, kernel_block_width
from goft.rotation.givens import givens_blocks, layout, rotate_rows_torch
from tests.support.models import tiny_model
from tests.support.triton_interpreter import exact_bfloat16_dot, interpreting, kernel_device

pytestmark = pytest.mark.cuda

DEVICE = kernel_device()
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}  # relative to the largest entry
# the block and scale gradients are float32 sums of exact half-precision products: far tighter than a half's rounding
PARAMETER_GRAD_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-4, torch.float16: 1e-4}
MODES = {
    "strict": dict(quasi=False, scaled=False),
    "quasi": dict(quasi=True, scaled=False),
    "scaled": dict(quasi=False, scaled=True),
    "quasi-scaled": dict(quasi=True, scaled=True),
}


@pytest.fixture(autouse=True)
def fresh_backend(monkeypatch):
    """Each test starts with no self-check done and no warning given; the interpreter multiplies bfloat16 exactly."""
    monkeypatch.setattr(rotation_backend, "_self_checks", {})
    monkeypatch.setattr(rotation_backend, "_warned", set())
    rotation_backend.triton_installed.cache_clear()
    monkeypatch.delenv(rotation_backend.KERNEL_ENV, raising=False)
    if interpreting():
        exact_bfloat16_dot(monkeypatch)


def case(d, tokens=40, quasi=False, scaled=False, dtype=torch.float32, seed=0):
    """Rows, 2×2 blocks (strict, or strict plus a free perturbation), an optional scale and an upstream gradient."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d, generator=gen).to(DEVICE, dtype)
    blocks = givens_blocks(torch.randn(d - 1, generator=gen))
    if quasi:
        blocks = blocks + 0.2 * torch.randn(d - 1, 2, 2, generator=gen)
    scale = 1 + 0.2 * torch.randn(d, generator=gen) if scaled else None
    upstream = torch.randn(tokens, d, generator=gen).to(DEVICE, dtype)
    return x, blocks.to(DEVICE), None if scale is None else scale.to(DEVICE), upstream


def outputs_and_grads(rotate, x, blocks, scale, upstream):
    leaves = [t.detach().clone().requires_grad_() for t in (x, blocks) + (() if scale is None else (scale,))]
    out = rotate(*leaves[:2], leaves[2] if scale is not None else None)
    (out.float() * upstream.float()).sum().backward()
    return [out.detach()] + [t.grad for t in leaves]


def relative_error(got, want):
    want = want.float()
    return float((got.float() - want).abs().max() / want.abs().max().clamp_min(1e-30))


def assert_matches_torch(x, blocks, scale, upstream, block=None):
    fused = outputs_and_grads(lambda *a: fused_rotate_rows(*a, block=block), x, blocks, scale, upstream)
    reference = outputs_and_grads(rotate_rows_torch, x, blocks, scale, upstream)
    names = ["output", "input gradient", "block gradient", "scale gradient"]
    tolerances = [TOLERANCE[x.dtype]] * 2 + [PARAMETER_GRAD_TOLERANCE[x.dtype]] * 2
    for name, got, want, tolerance in zip(names, fused, reference, tolerances):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert relative_error(got, want) <= tolerance, (name, relative_error(got, want))


def widths(block):
    """A tail-only odd width, one exact block, a lone leader after it, full blocks with a tail, exact multiples."""
    return [block // 2 + 3, block, block + 1, 2 * block + 5, 3 * block]


@pytest.mark.parametrize(
    "d,block", [(d, block) for block in (16, 32, 64, 128) for d in widths(block)], ids=lambda v: str(v)
)
def test_every_width_and_block_width_matches_torch_in_float32(d, block):
    lay = layout(d, block)
    assert (lay.n_full, lay.tail, lay.n_top) == (d // block, d % block, -(-d // block))
    assert_matches_torch(*case(d, quasi=True, scaled=True), block=block)


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("d,block", [(37, 16), (150, 64)])
def test_every_mode_and_dtype_matches_torch(d, block, mode, dtype):
    assert_matches_torch(*case(d, dtype=dtype, **MODES[mode]), block=block)


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
def test_default_block_width_and_odd_token_counts(dtype):
    for d, tokens in ((2, 1), (7, 3), (33, 65), (200, 129)):
        assert kernel_block_width(d) in (16, 32, 64)
        assert_matches_torch(*case(d, tokens=tokens, quasi=True, scaled=True, dtype=dtype))


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
def test_zero_angles_return_the_input_bit_for_bit(dtype):
    x = torch.randn(33, 150, generator=torch.Generator().manual_seed(3)).to(DEVICE, dtype)
    identity = givens_blocks(torch.zeros(149, device=DEVICE))
    assert torch.equal(fused_rotate_rows(x, identity), x)


def test_strict_rotation_keeps_row_norms_in_every_dtype():
    """The factors are built in float32 whatever the activations' dtype, so half precision only rounds the output."""
    x, blocks, _, _ = case(150, quasi=False)
    norms = x.norm(dim=-1)
    assert torch.allclose(fused_rotate_rows(x, blocks).norm(dim=-1), norms, rtol=1e-6)
    for dtype, rtol in ((torch.bfloat16, 1e-2), (torch.float16, 2e-3)):
        half = x.to(dtype)
        out = fused_rotate_rows(half, blocks)
        assert out.dtype == dtype
        assert torch.allclose(out.float().norm(dim=-1), half.float().norm(dim=-1), rtol=rtol)


def test_only_the_needed_gradients_are_computed():
    x, blocks, scale, upstream = case(70, quasi=True, scaled=True)
    full = outputs_and_grads(rotate_rows_torch, x, blocks, scale, upstream)
    for needs in ((False, True, False), (True, False, False), (False, False, True), (True, False, True)):
        leaves = [t.detach().clone().requires_grad_(need) for t, need in zip((x, blocks, scale), needs)]
        (fused_rotate_rows(*leaves).float() * upstream).sum().backward()
        for leaf, need, want in zip(leaves, needs, full[1:]):
            assert (leaf.grad is not None) == need
            if need:
                assert relative_error(leaf.grad, want) <= 1e-5


def test_strided_input_and_empty_input():
    base = torch.randn(70, 40, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    x = base.t()  # (40, 70) with a column stride of 40
    _, blocks, scale, upstream = case(70, tokens=40, quasi=True, scaled=True)
    assert not x.is_contiguous()
    assert_matches_torch(x, blocks, scale, upstream)
    empty = torch.zeros(0, 70, device=DEVICE, requires_grad=True)
    leaf = blocks.clone().requires_grad_()
    out = fused_rotate_rows(empty, leaf)
    out.sum().backward()
    assert out.shape == (0, 70) and torch.equal(leaf.grad, torch.zeros_like(leaf))


# ---------------------------------------------------------------------------------------------------------------
# Which path runs
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def kernel_calls(monkeypatch):
    """The shapes of the rows that reach the fused rotation, outside the self-check."""
    calls, checking = [], []
    real_rotate, real_check = fused_rotation.fused_rotate_rows, rotation_backend._run_self_check

    def counted(*args, **kwargs):
        if not checking:
            calls.append(args[0].shape)
        return real_rotate(*args, **kwargs)

    def check(*args):
        checking.append(True)
        try:
            return real_check(*args)
        finally:
            checking.pop()

    monkeypatch.setattr(fused_rotation, "fused_rotate_rows", counted)
    monkeypatch.setattr(rotation_backend, "_run_self_check", check)
    return calls


@pytest.fixture
def auto_on_this_device(monkeypatch):
    """Lets ``auto`` send this test device's tensors to the kernels (on CPU: the interpreter)."""
    monkeypatch.setattr(rotation_backend, "AUTO_DEVICE_TYPES", frozenset({DEVICE.type}))


def test_auto_uses_the_kernels_on_kernel_devices_only(monkeypatch, kernel_calls):
    x, blocks, scale, _ = case(37, quasi=True, scaled=True)
    want = rotate_rows_torch(x, blocks, scale)
    x3d = x.view(5, 8, 37)
    monkeypatch.setattr(rotation_backend, "AUTO_DEVICE_TYPES", frozenset({"not-this-device"}))
    assert torch.equal(rotate_rows(x3d, blocks, scale).view(40, 37), want) and kernel_calls == []
    monkeypatch.setattr(rotation_backend, "AUTO_DEVICE_TYPES", frozenset({DEVICE.type}))
    got = rotate_rows(x3d, blocks, scale)
    assert got.shape == x3d.shape and relative_error(got.view(40, 37), want) <= 1e-5
    assert kernel_calls == [(40, 37)]
    rotate_rows(x.double(), blocks.double(), scale.double())  # float64 stays on the PyTorch path
    assert kernel_calls == [(40, 37)]


def test_the_cpu_default_is_the_pytorch_path(kernel_calls):
    x, blocks, _, _ = case(37)
    rotate_rows(x.cpu(), blocks.cpu())
    assert kernel_calls == [] and set(rotation_backend.AUTO_DEVICE_TYPES) == {"cuda"}


def test_the_switch_forces_either_path(monkeypatch, auto_on_this_device, kernel_calls):
    x, blocks, _, _ = case(37)
    monkeypatch.setenv(rotation_backend.KERNEL_ENV, "torch")
    rotate_rows(x, blocks)
    assert kernel_calls == []
    monkeypatch.setenv(rotation_backend.KERNEL_ENV, " Triton ")
    monkeypatch.setattr(rotation_backend, "AUTO_DEVICE_TYPES", frozenset())
    rotate_rows(x, blocks)
    assert kernel_calls == [(40, 37)]


def test_use_backend_overrides_the_switch_for_a_block(monkeypatch, auto_on_this_device, kernel_calls):
    x, blocks, _, _ = case(37)
    monkeypatch.setenv(rotation_backend.KERNEL_ENV, "triton")
    with rotation_backend.use_backend("torch"):
        with rotation_backend.use_backend("torch"):
            rotate_rows(x, blocks)
        rotate_rows(x, blocks)
    assert kernel_calls == []
    rotate_rows(x, blocks)
    assert kernel_calls == [(40, 37)]
    with (
        pytest.raises(ValueError, match="one of auto, triton, torch, not 'pytorch'"),
        rotation_backend.use_backend("pytorch"),
    ):
        pass


def test_a_bad_switch_value_is_refused(monkeypatch):
    monkeypatch.setenv(rotation_backend.KERNEL_ENV, "cuda")
    with pytest.raises(ValueError, match="GOFT_ROTATION_KERNEL='cuda' is not one of auto, triton, torch"):
        rotate_rows(*case(37)[:2])


def test_forcing_the_kernels_says_why_they_cannot_run(monkeypatch):
    monkeypatch.setenv(rotation_backend.KERNEL_ENV, "triton")
    x, blocks, _, _ = case(37)
    with pytest.raises(RuntimeError, match="float32, bfloat16 and float16 activations; these are torch.float64"):
        rotate_rows(x.double(), blocks.double())
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="need CUDA tensors .*TRITON_INTERPRET=1.* on cpu"):
        rotate_rows(x.cpu(), blocks.cpu())
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(rotation_backend, "triton_installed", lambda: False)
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        rotate_rows(x, blocks)


def test_forced_kernels_are_checked_before_any_work(monkeypatch):
    """What a recipe's preflight asks: every way forced kernels could not run, refused up front; auto never is."""
    check = rotation_backend.check_requested_backend
    for value in ("auto", "torch"):
        monkeypatch.setenv(rotation_backend.KERNEL_ENV, value)
        check(cuda_available=False)
    monkeypatch.setenv(rotation_backend.KERNEL_ENV, "TRITON")
    check(cuda_available=True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="need a CUDA device and this machine has none"):
        check(cuda_available=False)
    monkeypatch.setattr(rotation_backend, "triton_installed", lambda: False)
    with pytest.raises(ValueError, match="Triton is not installed"):
        check(cuda_available=True)
    monkeypatch.setenv(rotation_backend.KERNEL_ENV, "1")
    with pytest.raises(ValueError, match="GOFT_ROTATION_KERNEL='1' is not one of"):
        check(cuda_available=True)


def test_auto_without_triton_warns_once_and_uses_pytorch(monkeypatch, auto_on_this_device, kernel_calls):
    monkeypatch.setattr(rotation_backend, "triton_installed", lambda: False)
    x, blocks, _, _ = case(37)
    with pytest.warns(RuntimeWarning, match="Triton is not installed") as caught:
        for _ in range(3):
            assert torch.equal(rotate_rows(x, blocks), rotate_rows_torch(x, blocks))
    assert len(caught) == 1 and kernel_calls == []


def test_whether_triton_is_installed_is_asked_once(monkeypatch):
    asked = []
    real_find_spec = rotation_backend.importlib.util.find_spec
    monkeypatch.setattr(
        rotation_backend.importlib.util, "find_spec", lambda name: asked.append(name) or real_find_spec(name)
    )
    assert rotation_backend.triton_installed() and rotation_backend.triton_installed()
    assert asked == ["triton"]


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
def test_the_self_check_passes_for_the_real_kernels(dtype):
    assert rotation_backend.self_check(DEVICE, dtype) is None
    assert rotation_backend._self_checks == {(str(DEVICE), dtype): None}


def wrong_block_rows(real):
    def perturbed(x2d, matrices, *args, **kwargs):
        out, leaders = real(x2d, matrices, *args, **kwargs)
        if out is not None:
            out[:, 0] += 1  # a kernel that gets one column wrong
        return out, leaders

    return perturbed


def failing_block_rows(*args, **kwargs):
    raise RuntimeError("PassManager::run failed")  # what a Triton compilation failure looks like


@pytest.mark.parametrize(
    "broken,reason",
    [(wrong_block_rows, "its output differs from the PyTorch path's by"), (None, "RuntimeError: PassManager::run")],
    ids=["disagrees", "fails-to-compile"],
)
def test_a_failed_self_check_falls_back_with_one_warning(monkeypatch, auto_on_this_device, broken, reason):
    monkeypatch.setattr(
        fused_rotation, "block_rows", broken(fused_rotation.block_rows) if broken else failing_block_rows
    )
    x, blocks, scale, _ = case(37, quasi=True, scaled=True)
    with pytest.warns(RuntimeWarning, match=f"failed its self-check on {DEVICE}") as caught:
        outputs = [rotate_rows(x, blocks, scale) for _ in range(3)]
    assert len(caught) == 1 and reason in str(caught[0].message)
    for out in outputs:
        assert torch.equal(out, rotate_rows_torch(x, blocks, scale))
    monkeypatch.setenv(rotation_backend.KERNEL_ENV, "triton")  # forced: the same failure is an error
    with pytest.raises(RuntimeError, match="failed its self-check.*Set GOFT_ROTATION_KERNEL=torch"):
        rotate_rows(x, blocks, scale)


def test_self_checks_run_once_per_device_and_dtype(monkeypatch, auto_on_this_device):
    runs = []
    real = rotation_backend._run_self_check
    monkeypatch.setattr(rotation_backend, "_run_self_check", lambda *a: runs.append(a) or real(*a))
    x, blocks, _, _ = case(37)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dtype in (torch.float32, torch.bfloat16, torch.float32, torch.bfloat16):
            rotate_rows(x.to(dtype), blocks)
    assert runs == [(x.device, torch.float32), (x.device, torch.bfloat16)]  # cuda:0 on a GPU


def test_a_self_check_under_inference_mode_still_differentiates(auto_on_this_device, kernel_calls):
    x, blocks, _, _ = case(37)
    with torch.inference_mode():
        out = rotate_rows(x, blocks)
    assert relative_error(out, rotate_rows_torch(x, blocks)) <= 1e-5 and kernel_calls == [(40, 37)]


@pytest.mark.parametrize("quasi,scaling", [(False, False), (True, True)])
def test_an_adapted_model_trains_the_same_on_the_kernels(monkeypatch, quasi, scaling):
    """The whole peft model through the kernels: logits and every adapter gradient as on the PyTorch path."""

    def logits_and_grads(backend):
        monkeypatch.setenv(rotation_backend.KERNEL_ENV, backend)
        torch.manual_seed(0)
        config = GivensConfig(
            target_modules=["q_proj", "v_proj", "down_proj"], quasi=quasi, scaling=scaling, strict=not quasi
        )
        model = get_peft_model(tiny_model("llama"), config).to(DEVICE)
        for name, param in model.named_parameters():
            if param.requires_grad:  # away from the identity, so every term of the rotation counts
                param.data.add_(0.3 * torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))))
        ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1)).to(DEVICE)
        logits = model(input_ids=ids).logits
        logits.square().mean().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        return logits.detach(), grads

    logits, grads = logits_and_grads("triton")
    want_logits, want_grads = logits_and_grads("torch")
    assert relative_error(logits, want_logits) <= 1e-5
    assert grads.keys() == want_grads.keys() and len(grads) >= 6
    for name in grads:
        assert relative_error(grads[name], want_grads[name]) <= 1e-4, name


def test_only_the_inputs_are_saved_for_backward():
    """Like the PyTorch path, the fused rotation keeps no intermediate: layers that share an input share it."""
    x, blocks, scale, _ = case(150, quasi=True, scaled=True)
    leaves = [t.clone().requires_grad_() for t in (x, blocks, scale)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fused_rotate_rows(*leaves)
    storages = {t.untyped_storage().data_ptr() for t in saved}
    assert storages == {t.untyped_storage().data_ptr() for t in leaves}
