"""Triton kernels for the block part of the rotation; imported only when the fused path runs (needs ``triton``).

A width ``d`` is cut into ``n_blocks = ceil(d / B)`` column blocks of ``B`` (the last one padded with zeros). Both
kernels take the blocks' ``B × B`` matrices packed as ``(n_blocks, B, B)`` float32 and read every activation once:

* ``block_rows``: ``out_b = x_b M_b + shift_b ⊗ (first row of M_b)`` per tile of tokens and block ``b``, i.e. the
  diagonal block product with the block leaders' rank-one correction (``shift = new − old leader``), and
  optionally the first column of ``out_b`` (the block's leader) in float32 beside it;
* ``block_grams``: ``Σ_t mid_bᵀ g_b`` per block with ``mid_b = x_b + shift_b e₀``, reduced over tokens in
  registers: neither ``x`` nor ``g`` is copied, ``mid`` is never stored.

Products accumulate in float32. Half-precision activations are exact in their own dtype; the float32 matrix is
split into ``hi + lo`` in that dtype, so two tensor-core products give ~16 significant bits of it (one would give
8). Float32 activations use exact float32 products (no TF32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from goft.rotation.givens import KERNEL_DTYPES


@triton.jit
def _matmul(a, m, acc, EXACT: tl.constexpr):
    """``acc + a @ m`` for ``a`` exact in its own dtype and a float32 ``m``, accumulated in float32."""
    if EXACT:
        return tl.dot(a, m, acc, input_precision="ieee")
    hi = m.to(a.dtype)
    lo = (m - hi.to(tl.float32)).to(a.dtype)
    return tl.dot(a, lo, tl.dot(a, hi, acc))


@triton.jit
def _block_rows_kernel(
    x_ptr,
    m_ptr,
    shift_ptr,
    out_ptr,
    leaders_ptr,
    n_tokens,
    width,
    n_blocks,
    x_row_stride,
    x_col_stride,
    out_row_stride,
    BLOCK: tl.constexpr,
    TILE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    STORE_OUT: tl.constexpr,
    STORE_LEADERS: tl.constexpr,
    EXACT: tl.constexpr,
):
    tile, b = tl.program_id(0), tl.program_id(1)
    rows = tile.to(tl.int64) * TILE + tl.arange(0, TILE)
    k = tl.arange(0, BLOCK)
    cols = b * BLOCK + k
    row_ok = rows < n_tokens
    mask = row_ok[:, None] & (cols[None, :] < width)
    x = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :] * x_col_stride, mask=mask, other=0.0)
    block_ptr = m_ptr + b.to(tl.int64) * BLOCK * BLOCK
    m = tl.load(block_ptr + k[:, None] * BLOCK + k[None, :])
    acc = _matmul(x, m, tl.zeros((TILE, BLOCK), tl.float32), EXACT)
    if HAS_SHIFT:  # the leader's new value enters through the block's first row (rank one)
        shift = tl.load(shift_ptr + rows * n_blocks + b, mask=row_ok, other=0.0)
        acc += shift[:, None] * tl.load(block_ptr + k)[None, :]
    if STORE_OUT:
        tl.store(out_ptr + rows[:, None] * out_row_stride + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)
    if STORE_LEADERS:
        leader = tl.sum(tl.where(k[None, :] == 0, acc, 0.0), axis=1)
        tl.store(leaders_ptr + rows * n_blocks + b, leader, mask=row_ok)


@triton.jit
def _block_grams_kernel(
    x_ptr,
    g_ptr,
    shift_ptr,
    partial_ptr,
    n_tokens,
    width,
    n_blocks,
    tiles_per_part,
    x_row_stride,
    x_col_stride,
    g_row_stride,
    g_col_stride,
    BLOCK: tl.constexpr,
    TILE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    EXACT: tl.constexpr,
):
    b, part = tl.program_id(0), tl.program_id(1)
    k = tl.arange(0, BLOCK)
    cols = b * BLOCK + k
    col_ok = cols < width
    acc = tl.zeros((BLOCK, BLOCK), tl.float32)  # the transposed gram g_bᵀ mid_b
    for i in range(tiles_per_part):
        rows = (part.to(tl.int64) * tiles_per_part + i) * TILE + tl.arange(0, TILE)
        row_ok = rows < n_tokens
        mask = row_ok[:, None] & col_ok[None, :]
        g = tl.load(g_ptr + rows[:, None] * g_row_stride + cols[None, :] * g_col_stride, mask=mask, other=0.0)
        mid = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :] * x_col_stride, mask=mask, other=0.0)
        mid = mid.to(tl.float32)
        if HAS_SHIFT:
            shift = tl.load(shift_ptr + rows * n_blocks + b, mask=row_ok, other=0.0)
            mid += tl.where(k[None, :] == 0, shift[:, None], 0.0)
        acc = _matmul(tl.trans(g), mid, acc, EXACT)
    offsets = (part.to(tl.int64) * n_blocks + b) * BLOCK * BLOCK + k[:, None] * BLOCK + k[None, :]
    tl.store(partial_ptr + offsets, acc)


def _tile(block: int) -> int:
    """Tokens per program: 64 rows of up to 64 columns, fewer for wider blocks (register pressure)."""
    return 64 if block <= 64 else 32


def _check_rows(x2d: torch.Tensor, n_blocks: int, shift: torch.Tensor | None) -> None:
    if x2d.dtype not in KERNEL_DTYPES:
        raise TypeError(f"The Triton rotation kernel runs float32, bfloat16 and float16, not {x2d.dtype}.")
    if shift is not None and (shift.dtype != torch.float32 or shift.shape != (x2d.shape[0], n_blocks)):
        raise ValueError("The leader shift must be float32 of shape (tokens, ceil(d / B)).")


def block_rows(
    x2d: torch.Tensor,
    matrices: torch.Tensor,
    shift: torch.Tensor | None = None,
    store_out: bool = True,
    store_leaders: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(out, leaders)``: ``out`` (dtype of ``x2d``) holds ``x_b M_b + shift_b ⊗ M_b[0]`` per block, ``leaders``
    (float32, ``(T, n_blocks)``) the first column of every block of it; each is None unless asked for."""
    tokens, width = x2d.shape
    n_blocks, block, _ = matrices.shape
    if matrices.dtype != torch.float32 or not matrices.is_contiguous() or n_blocks != -(-width // block):
        raise ValueError("The block matrices must be contiguous float32 of shape (ceil(d / B), B, B).")
    _check_rows(x2d, n_blocks, shift)
    out = torch.empty_like(x2d, memory_format=torch.contiguous_format) if store_out else None
    leaders = x2d.new_empty(tokens, n_blocks, dtype=torch.float32) if store_leaders else None
    if tokens == 0:
        return out, leaders
    tile = _tile(block)
    _block_rows_kernel[(triton.cdiv(tokens, tile), n_blocks)](
        x2d,
        matrices,
        shift if shift is not None else matrices,  # an unused pointer must still be a tensor
        out if out is not None else x2d,
        leaders if leaders is not None else matrices,
        tokens,
        width,
        n_blocks,
        x2d.stride(0),
        x2d.stride(1),
        width,
        BLOCK=block,
        TILE=tile,
        HAS_SHIFT=shift is not None,
        STORE_OUT=store_out,
        STORE_LEADERS=store_leaders,
        EXACT=x2d.dtype == torch.float32,
    )
    return out, leaders


def _parts(n_tiles: int, n_blocks: int, device: torch.device) -> int:
    """How many programs share a block's token reduction: enough for ~4 programs per multiprocessor."""
    if device.type != "cuda":  # the interpreter: still split, so the partial sums are exercised
        return min(n_tiles, 2)
    processors = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_tiles, -(-4 * processors // n_blocks)))


def block_grams(x2d: torch.Tensor, g2d: torch.Tensor, block: int, shift: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_t mid_bᵀ g_b`` per block, ``(n_blocks, B, B)`` float32, with ``mid_b = x_b + shift_b e₀`` (the leader of
    block ``b`` shifted); ``x2d`` and ``g2d`` are ``(T, d)`` of the same dtype."""
    if g2d.shape != x2d.shape or g2d.dtype != x2d.dtype:
        raise ValueError("The input and its gradient must have the same shape and dtype.")
    tokens, width = x2d.shape
    n_blocks = -(-width // block)
    _check_rows(x2d, n_blocks, shift)
    if tokens == 0:
        return x2d.new_zeros(n_blocks, block, block, dtype=torch.float32)
    tile = _tile(block)
    n_tiles = triton.cdiv(tokens, tile)
    parts = _parts(n_tiles, n_blocks, x2d.device)
    partial = x2d.new_empty(parts, n_blocks, block, block, dtype=torch.float32)
    _block_grams_kernel[(n_blocks, parts)](
        x2d,
        g2d,
        shift if shift is not None else partial,
        partial,
        tokens,
        width,
        n_blocks,
        triton.cdiv(n_tiles, parts),
        x2d.stride(0),
        x2d.stride(1),
        g2d.stride(0),
        g2d.stride(1),
        BLOCK=block,
        TILE=tile,
        HAS_SHIFT=shift is not None,
        EXACT=x2d.dtype == torch.float32,
    )
    return partial.sum(0).transpose(-1, -2)
