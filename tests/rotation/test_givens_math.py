"""The rotation itself (goft.rotation.givens): stage plan, orthogonality, exactness against dense matrices,
gradients."""

import math

import pytest
import torch

from goft.rotation import givens
from goft.rotation.backend import rotate_rows
from goft.rotation.givens import (
    apply_factors,
    block_width,
    build_factors,
    dense_rotation,
    givens_blocks,
    orthogonality_defect,
    rotate_rows_reference,
    rotate_weight,
    stage_plan,
)


def pairs(stage) -> list[tuple[int, int]]:
    """The index pairs a stage rotates: ``(2k·stride, (2k+1)·stride)`` for ``k < n_pairs`` (GOFT, Eq. 2-3)."""
    return [(2 * k * stage.stride, (2 * k + 1) * stage.stride) for k in range(stage.n_pairs)]


def dense_from_definition(blocks: torch.Tensor, d: int) -> torch.Tensor:
    """R = P_L ⋯ P_1 written out literally from the GOFT paper (Eq. 1–3, 5), independently of goft's code.

    Each block acts on column vectors as ``[v_i, v_j] ← M [v_i, v_j]`` (strict: ``M = [[cos, −sin], [sin, cos]]``),
    so ``P_r`` holds ``M`` at rows/columns ``(i, j)``. The layer computes ``W Rᵀ x``, i.e. ``x R`` for row inputs.
    """
    R = torch.eye(d, dtype=torch.float64)
    for stage in stage_plan(d):
        P = torch.eye(d, dtype=torch.float64)
        for k, (i, j) in enumerate(pairs(stage)):
            m = blocks[stage.offset + k].double()
            P[i, i], P[i, j], P[j, i], P[j, j] = m[0, 0], m[0, 1], m[1, 0], m[1, 1]
        R = P @ R  # R = P_L ⋯ P_1
    return R


def test_stage_plans_match_method():
    assert [pairs(s) for s in stage_plan(8)] == [[(0, 1), (2, 3), (4, 5), (6, 7)], [(0, 2), (4, 6)], [(0, 4)]]
    assert [pairs(s) for s in stage_plan(12)] == [
        [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)],
        [(0, 2), (4, 6), (8, 10)],
        [(0, 4)],
        [(0, 8)],
    ]
    assert [pairs(s) for s in stage_plan(7)] == [[(0, 1), (2, 3), (4, 5)], [(0, 2), (4, 6)], [(0, 4)]]


@pytest.mark.parametrize("d", [2, 3, 5, 7, 8, 12, 13, 63, 64, 65, 100, 127, 129, 1000, 4096, 5000])
def test_plan_counts_and_layout(d):
    plan = stage_plan(d)
    assert len(plan) == math.ceil(math.log2(d))
    assert sum(s.n_pairs for s in plan) == d - 1
    assert plan[0].n_pairs == d // 2  # stage-major layout: stage 1 first
    offsets = [s.offset for s in plan]
    assert offsets == sorted(offsets) and offsets[0] == 0
    # every index but 0 is the right partner of exactly one pair: the reduction tree reaches all coordinates
    rights = sorted(j for s in plan for _, j in pairs(s))
    assert rights == list(range(1, d))


def test_plan_rejects_degenerate_width():
    with pytest.raises(ValueError, match="width d >= 2"):
        stage_plan(1)


@pytest.mark.parametrize("d", [2, 3, 7, 8, 12, 13, 1000, 4096])
def test_strict_rotation_is_orthogonal_fp32(d):
    torch.manual_seed(d)
    blocks = givens_blocks(torch.randn(d - 1) * 2.0)
    R = dense_rotation(blocks, d)
    assert R.dtype == torch.float32
    R64 = R.double()
    defect = (R64.t() @ R64 - torch.eye(d, dtype=torch.float64)).abs().max().item()
    assert defect <= 1e-5
    assert orthogonality_defect(blocks, d) == pytest.approx(defect, abs=2e-7)


@pytest.mark.parametrize("d", [2, 3, 7, 12, 64, 65, 130, 300])
@pytest.mark.parametrize("quasi", [False, True])
def test_dense_rotation_matches_definition(d, quasi):
    torch.manual_seed(d)
    blocks = givens_blocks(torch.randn(d - 1, dtype=torch.float64))
    if quasi:
        blocks = blocks + 0.3 * torch.randn_like(blocks)
    expected = dense_from_definition(blocks, d)
    assert torch.allclose(dense_rotation(blocks, d), expected, atol=1e-12)
    assert torch.allclose(rotate_rows_reference(torch.eye(d, dtype=torch.float64), blocks), expected, atol=1e-12)
    x = torch.randn(5, d, dtype=torch.float64)
    assert torch.allclose(rotate_rows(x, blocks), x @ expected, atol=1e-12)


def test_orthogonality_defect_detects_non_orthogonal_blocks():
    d = 300
    blocks = givens_blocks(torch.randn(d - 1))
    assert orthogonality_defect(blocks, d) < 1e-5
    blocks[250, 0, 0] *= 1.01  # one block of a top stage slightly off
    R = dense_rotation(blocks, d).double()
    dense = (R.t() @ R - torch.eye(d, dtype=torch.float64)).abs().max().item()
    assert dense > 1e-3
    assert orthogonality_defect(blocks, d) == pytest.approx(dense, rel=1e-5)


@pytest.mark.parametrize("block", [16, 32, 64, 128])
@pytest.mark.parametrize("d", [9, 40, 130, 300, 1000])
@pytest.mark.parametrize("quasi", [False, True])
def test_every_block_width_gives_the_same_rotation(block, d, quasi):
    """The block width changes how R is evaluated, never R: both directions, merge and exact inverse."""
    torch.manual_seed(d + block)
    blocks = givens_blocks(torch.randn(d - 1, dtype=torch.float64))
    if quasi:
        blocks = blocks + 0.3 * torch.randn_like(blocks)
    R = dense_from_definition(blocks, d)
    x = torch.randn(6, d, dtype=torch.float64)
    f = build_factors(blocks, d, block=block)
    assert torch.allclose(apply_factors(x, f, block=block), x @ R, atol=1e-12)
    assert torch.allclose(apply_factors(x, f, transpose=True, block=block), x @ R.t(), atol=1e-12)
    inverse = build_factors(blocks, d, inverse=True, block=block)
    assert torch.allclose(apply_factors(x @ R, inverse, block=block), x, atol=1e-10)


def test_block_width_balances_blocks_and_leaders():
    # work per token ~ d·B (diagonal blocks) + (d/B)² (leaders): small blocks for small layers, larger for wide ones
    assert [block_width(d) for d in (64, 576, 1536, 4096, 8192, 16384, 65536)] == [16, 16, 16, 16, 32, 32, 64]


@pytest.mark.parametrize("d", [2, 3, 7, 12, 35, 65, 130])
def test_gradcheck_strict(d):
    torch.manual_seed(0)
    x = torch.randn(4, d, dtype=torch.float64, requires_grad=True)
    theta = torch.randn(d - 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, t: rotate_rows(x, givens_blocks(t)), (x, theta))


@pytest.mark.parametrize("d", [2, 3, 7, 12, 35, 65, 130])
def test_gradcheck_quasi(d):
    torch.manual_seed(0)
    x = torch.randn(4, d, dtype=torch.float64, requires_grad=True)
    blocks = givens_blocks(torch.randn(d - 1, dtype=torch.float64)) + 0.2 * torch.randn(
        d - 1, 2, 2, dtype=torch.float64
    )
    blocks.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, m: rotate_rows(x, m), (x, blocks))


@pytest.mark.parametrize("d", [2, 3, 12, 17, 35, 65, pytest.param(130, marks=pytest.mark.slow)])  # 130: ~9 s
@pytest.mark.parametrize("quasi", [False, True])
def test_gradcheck_scaled(d, quasi):
    """GOFT*: the scale is applied inside the same function (one saved input), gradients in x, blocks and scale."""
    torch.manual_seed(d)
    x = torch.randn(4, d, dtype=torch.float64, requires_grad=True)
    theta = torch.randn(d - 1, dtype=torch.float64, requires_grad=True)
    free = (
        0.2 * torch.randn(d - 1, 2, 2, dtype=torch.float64) if quasi else torch.zeros(d - 1, 2, 2, dtype=torch.float64)
    )
    scale = (1 + 0.3 * torch.randn(d, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, t, s: rotate_rows(x, givens_blocks(t) + free, s), (x, theta, scale))
    R = dense_from_definition(givens_blocks(theta.detach()) + free, d)
    assert torch.allclose(rotate_rows(x, givens_blocks(theta) + free, scale), (x @ R) * scale, atol=1e-12)


@pytest.mark.parametrize("quasi", [False, True])
def test_gradients_equal_plain_autograd_reference(quasi):
    torch.manual_seed(0)
    d = 333
    x = torch.randn(3, 7, d, requires_grad=True)
    blocks = givens_blocks(torch.randn(d - 1))
    if quasi:
        blocks = blocks + 0.2 * torch.randn_like(blocks)
    blocks.requires_grad_()
    upstream = torch.randn(3, 7, d)
    (rotate_rows(x, blocks) * upstream).sum().backward()
    fast = (x.grad.clone(), blocks.grad.clone())
    x.grad = blocks.grad = None
    (rotate_rows_reference(x, blocks) * upstream).sum().backward()
    assert torch.allclose(fast[0], x.grad, atol=1e-5)
    assert torch.allclose(fast[1], blocks.grad, atol=1e-4, rtol=1e-5)


def test_half_precision_inputs_compute_in_fp32_and_keep_dtype():
    torch.manual_seed(0)
    d = 200
    theta = torch.randn(d - 1, requires_grad=True)
    x = torch.randn(6, d)
    for dtype in (torch.bfloat16, torch.float16):
        xh = x.to(dtype).requires_grad_()
        out = rotate_rows(xh, givens_blocks(theta))
        assert out.dtype == dtype
        expected = xh.detach().float() @ dense_rotation(givens_blocks(theta.detach()), d)
        assert torch.allclose(out.float(), expected, atol=2e-2, rtol=1e-2)
        out.float().sum().backward()
        assert xh.grad.dtype == dtype and theta.grad.dtype == torch.float32
        theta.grad = None


def test_merge_and_unmerge_weight_roundtrip():
    torch.manual_seed(0)
    d, n = 150, 40
    W = torch.randn(n, d, dtype=torch.float64)
    strict = givens_blocks(torch.randn(d - 1, dtype=torch.float64))
    quasi = strict + 0.2 * torch.randn_like(strict)
    for blocks, orthogonal in ((strict, True), (quasi, False)):
        R = dense_from_definition(blocks, d)
        merged = rotate_weight(W, blocks, orthogonal)
        assert torch.allclose(merged, W @ R.t(), atol=1e-12)  # W ← W Rᵀ
        assert torch.allclose(rotate_weight(merged, blocks, orthogonal, inverse=True), W, atol=1e-10)


def test_strict_unmerge_uses_the_transpose_not_an_inverse(monkeypatch):
    d = 70
    blocks = givens_blocks(torch.randn(d - 1, dtype=torch.float64))
    W = torch.randn(5, d, dtype=torch.float64)
    merged = rotate_weight(W, blocks, True)

    def forbidden(*args, **kwargs):
        raise AssertionError("strict unmerge must not invert blocks")

    monkeypatch.setattr(givens, "invert_blocks", forbidden)
    R = dense_from_definition(blocks, d)
    assert torch.allclose(rotate_weight(merged, blocks, True, inverse=True), merged @ R, atol=1e-12)  # W ← W R


def test_singular_quasi_block_cannot_be_unmerged():
    d = 9
    blocks = torch.eye(2).repeat(d - 1, 1, 1)
    blocks[3] = torch.tensor([[1.0, 2.0], [0.5, 1.0]])  # determinant 0
    with pytest.raises(ValueError, match="block #3 is singular"):
        rotate_weight(torch.randn(4, d), blocks, False, inverse=True)


def test_blocks_shape_is_checked():
    with pytest.raises(ValueError, match=r"Expected blocks of shape \(9, 2, 2\)"):
        rotate_rows(torch.randn(2, 10), torch.eye(2).repeat(8, 1, 1))
    with pytest.raises(ValueError, match=r"Expected a scale of shape \(10,\)"):
        rotate_rows(torch.randn(2, 10), torch.eye(2).repeat(9, 1, 1), torch.ones(9))


def test_tables_first_made_under_inference_mode_still_train():
    d = 77  # a width no other test uses, so its tables are made here, under inference mode
    x = torch.randn(3, d)
    with torch.inference_mode():
        rotate_rows(x, givens_blocks(torch.zeros(d - 1)))
    theta = torch.randn(d - 1, requires_grad=True)
    R = dense_rotation(givens_blocks(theta), d)  # autograd through the cached tables
    (rotate_rows(x, givens_blocks(theta)).sum() + R.sum()).backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()
