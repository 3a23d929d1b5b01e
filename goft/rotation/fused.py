"""The rotation ``x ↦ (x R) ⊙ s`` on the fused Triton kernels (``triton_rotation``), with its autograd.

The same two-level factorisation as ``givens`` (``R = Top · Low``, GOFT Eq. 2–3 multiplied out): the factors are
built in float32 from the 2×2 blocks whatever the activations' dtype, so the rotation stays exactly orthogonal up
to float32 rounding. Per token, the small leader product ``x_leaders · (Top − I)`` runs beside the kernels; the
kernels do the ``B × B`` block products with the leaders' rank-one correction (forward and input gradient) and the
block gradients ``mid_bᵀ g_b`` reduced over tokens. The GOFT* scale folds into the block matrices
(``(x_b Low_b) ⊙ s_b = x_b (Low_b diag s_b)``), so no kernel ever scales an activation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from goft.rotation.givens import Factors, Layout, blocks_grad, layout, path_values
from goft.rotation.triton_kernels import block_grams, block_rows


def kernel_block_width(d: int) -> int:
    """Block width of the fused path: 64 (tensor-core friendly tiles, the leaders 1/64 of a row) down to the
    smallest power of two ``>= 16`` that holds a narrow width whole."""
    return 64 if d > 32 else 32 if d > 16 else 16


def _packed_blocks(f: Factors, lay: Layout) -> torch.Tensor:
    """Every diagonal block of Low as one ``(n_blocks, B, B)`` float32 tensor; the tail block padded with zeros
    (a lone last coordinate is a block ``[[1]]``: Low leaves it alone, Top moves it as a leader)."""
    template = f.low_full if f.low_full is not None else f.low_tail if f.low_tail is not None else f.top
    packed = template.new_zeros(lay.n_top, lay.block, lay.block)
    if f.low_full is not None:
        packed[: lay.n_full] = f.low_full
    if f.low_tail is not None:
        packed[lay.n_full, : lay.tail, : lay.tail] = f.low_tail
    elif lay.tail == 1:
        packed[lay.n_full, 0, 0] = 1.0
    return packed


def _packed_scale(scale: torch.Tensor | None, lay: Layout) -> torch.Tensor | None:
    """The GOFT* scale as ``(n_blocks, B)`` float32, zero-padded like the blocks."""
    if scale is None:
        return None
    padded = scale.new_zeros(lay.n_top * lay.block, dtype=torch.float32)
    padded[: lay.d] = scale
    return padded.view(lay.n_top, lay.block)


def _leaders(x2d: torch.Tensor, lay: Layout) -> torch.Tensor:
    """The block leaders of the rows, ``(T, n_blocks)`` float32 (a strided gather of 1/B of each row)."""
    return x2d[:, :: lay.block].float()


def _leader_shift(leaders: torch.Tensor, f: Factors) -> torch.Tensor | None:
    """``x_leaders Top − x_leaders`` (``(T, n_blocks)`` float32): how much Top moves each block's leader."""
    if f.top is None:
        return None
    return torch.addmm(leaders, leaders, f.top, alpha=1.0, beta=-1.0)


def _factors(work_blocks: torch.Tensor, lay: Layout) -> tuple[Factors, list]:
    """The factors from float32 ``work_blocks``, and the path entries their gradient needs."""
    entries = path_values(work_blocks, lay.d, lay.block)
    return Factors(*(None if e is None else e.prod(-1) for e in entries)), entries


@dataclass(frozen=True)
class ForwardMatrices:
    """What the forward kernel multiplies by: Low's blocks packed (the GOFT* scale folded in) and Top, in float32."""

    layout: Layout
    packed: torch.Tensor  # (n_blocks, B, B)
    top: torch.Tensor | None  # (n_blocks, n_blocks)


def forward_matrices(blocks: torch.Tensor, scale: torch.Tensor | None, lay: Layout) -> ForwardMatrices:
    """The forward's matrices from the 2×2 blocks (built in float32 whatever their dtype)."""
    f, _ = _factors(blocks.float(), lay)
    packed = _packed_blocks(f, lay)
    if scale is not None:
        packed = packed * _packed_scale(scale, lay)[:, None, :]
    return ForwardMatrices(lay, packed, f.top)


def rotate_with_matrices(x2d: torch.Tensor, matrices: ForwardMatrices) -> torch.Tensor:
    """``(x R) ⊙ s`` for rows ``x2d`` on the kernels, from prepared matrices."""
    f = Factors(None, None, matrices.top)
    shift = _leader_shift(_leaders(x2d, matrices.layout), f) if matrices.top is not None else None
    out, _ = block_rows(x2d, matrices.packed, shift)
    return out


class FusedRotateRows(torch.autograd.Function):
    """``x ↦ (x R) ⊙ s`` for ``x`` ``(T, d)`` in float32, bfloat16 or float16, 2×2 ``blocks`` ``(d − 1, 2, 2)`` and
    an optional GOFT* scale ``(d,)``; ``block`` is the diagonal block width. Saves only its inputs."""

    @staticmethod
    def forward(ctx, x2d, blocks, scale, block):
        with torch.no_grad():
            out = rotate_with_matrices(x2d, forward_matrices(blocks, scale, layout(x2d.shape[-1], block)))
        ctx.save_for_backward(x2d, blocks, scale)
        ctx.block = block
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x2d, blocks, scale = ctx.saved_tensors
        need_x, need_blocks, need_scale, _ = ctx.needs_input_grad
        lay = layout(x2d.shape[-1], ctx.block)
        g = grad_out.to(x2d.dtype)
        work_blocks = blocks.float()
        f, entries = _factors(work_blocks, lay)
        packed = _packed_blocks(f, lay)
        packed_scale = _packed_scale(scale, lay)
        # the gradient at mid = x Top, block by block: (g ⊙ s)_b Low_bᵀ = g_b (diag s_b Low_bᵀ)
        backward_matrices = packed.transpose(-1, -2)
        if packed_scale is not None:
            backward_matrices = backward_matrices * packed_scale[:, :, None]
        grad_mid, mid_leaders = block_rows(
            g,
            backward_matrices.contiguous(),
            store_out=need_x,
            store_leaders=f.top is not None and (need_x or need_blocks),
        )
        grad_blocks = grad_scale = None
        if need_blocks or need_scale:
            x_leaders = _leaders(x2d, lay) if f.top is not None else None
            grams = block_grams(x2d, g, lay.block, _leader_shift(x_leaders, f))  # mid_bᵀ g_b, unscaled g
            if scale is not None:
                # ∂L/∂s_j = Σ_t (x R)_tj g_tj = column j of Low_b ⊙ (mid_bᵀ g_b), summed over rows
                grad_scale = (packed * grams).sum(-2).reshape(-1)[: lay.d].to(scale.dtype)
                grams = grams * packed_scale[:, None, :]  # Low's own gradient: mid_bᵀ (g ⊙ s)_b
            if need_blocks:
                factor_grads = [
                    grams[: lay.n_full] if f.low_full is not None else None,
                    grams[lay.n_full, : lay.tail, : lay.tail] if f.low_tail is not None else None,
                    x_leaders.t() @ mid_leaders if f.top is not None else None,
                ]
                grad_blocks = blocks_grad(work_blocks, lay.d, entries, factor_grads, lay.block).to(blocks.dtype)
        grad_x = None
        if need_x:
            grad_x = grad_mid
            if f.top is not None:  # the leaders' gradient through Top, from their float32 values
                grad_x[:, :: lay.block] = (mid_leaders @ f.top.t()).to(grad_x.dtype)
        return grad_x, grad_blocks, grad_scale, None


def fused_rotate_rows(
    x2d: torch.Tensor, blocks: torch.Tensor, scale: torch.Tensor | None = None, block: int | None = None
) -> torch.Tensor:
    """``(x R) ⊙ scale`` for rows ``x2d`` ``(T, d)`` on the Triton kernels; ``block`` defaults to
    ``kernel_block_width(d)``."""
    return FusedRotateRows.apply(x2d, blocks, scale, block or kernel_block_width(x2d.shape[-1]))
