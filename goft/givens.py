"""The Givens rotation of GOFT: stage plan, fast application, autograd, dense matrices. No peft here.

Notation (Ma et al., ICML 2024): a Linear weight ``W`` is ``(n, d)`` and the adapted layer computes
``y = W Rᵀ x`` with ``R = P_L ⋯ P_1``. Tokens are rows in PyTorch, so every function here computes the
row-vector form ``x R`` (which equals ``(Rᵀ x)ᵀ``).

Each Givens pair carries a 2×2 block ``M``; a stage maps a row's pair ``[v_i, v_j] ← [v_i, v_j] M``
(that is ``Mᵀ`` acting on the column ``[x_i, x_j]``). Strict GOFT uses ``M = [[cos θ, −sin θ], [sin θ, cos θ]]``
(Eq. 1); quasi GOFT uses a free ``M`` (Eq. 5). Both share every code path below.

Speed: the first ``log2(BLOCK)`` stages only mix coordinates inside aligned blocks of ``BLOCK`` columns, so they
compose into small dense ``BLOCK × BLOCK`` matrices applied as one batched matmul; the remaining stages act on the
``ceil(d / BLOCK)`` block leaders only (every ``BLOCK``-th column) and compose into one small dense matrix. No step
makes a full-length pass over ``x`` per stage.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

BLOCK = 64  # width of the diagonal blocks; a power of two


@dataclass(frozen=True)
class Stage:
    """One stage of the plan: pairs ``(2k·stride, (2k+1)·stride)`` for ``k < n_pairs``."""

    stride: int
    n_pairs: int
    offset: int  # position of this stage's first block in the stage-major parameter layout

    def pairs(self) -> list[tuple[int, int]]:
        return [(2 * k * self.stride, (2 * k + 1) * self.stride) for k in range(self.n_pairs)]


@functools.lru_cache(maxsize=None)
def stage_plan(d: int) -> tuple[Stage, ...]:
    """The binary reduction tree with carry: ``d − 1`` rotations in ``ceil(log2 d)`` stages (GOFT, Eq. 2–3)."""
    if not isinstance(d, int) or d < 2:
        raise ValueError(f"A Givens rotation needs a width d >= 2, got {d!r}.")
    stages, active, stride, offset = [], d, 1, 0
    while active > 1:
        n_pairs = active // 2  # an unpaired last active index carries to the next stage
        stages.append(Stage(stride, n_pairs, offset))
        offset, active, stride = offset + n_pairs, (active + 1) // 2, stride * 2
    return tuple(stages)


def num_rotations(d: int) -> int:
    return d - 1


def givens_blocks(theta: torch.Tensor) -> torch.Tensor:
    """Strict 2×2 blocks ``[[cos θ, −sin θ], [sin θ, cos θ]]`` from angles, shape ``(..., 2, 2)`` (Eq. 1)."""
    cos, sin = torch.cos(theta), torch.sin(theta)
    return torch.stack((torch.stack((cos, -sin), -1), torch.stack((sin, cos), -1)), -2)


def angles_from_raw(raw: torch.Tensor) -> torch.Tensor:
    """``θ = π · tanh(a)``: bounded angles, ``a = 0`` is the identity."""
    return math.pi * torch.tanh(raw)


def invert_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """Inverse of every 2×2 block; refuses singular blocks (exact qGOFT unmerge)."""
    a, b, c, e = blocks[..., 0, 0], blocks[..., 0, 1], blocks[..., 1, 0], blocks[..., 1, 1]
    det = a * e - b * c
    tiny = torch.finfo(blocks.dtype).eps * blocks.abs().amax(dim=(-1, -2)).clamp_min(1.0) ** 2
    if bool((det.abs() <= tiny).any()):
        worst = int(det.abs().argmin())
        raise ValueError(
            f"Cannot invert the quasi-Givens rotation: its 2x2 block #{worst} is singular "
            f"(determinant {float(det.flatten()[worst]):.3e}). The adapter cannot be unmerged exactly."
        )
    return torch.stack((torch.stack((e, -b), -1), torch.stack((-c, a), -1)), -2) / det[..., None, None]


def _apply_stage(v: torch.Tensor, stride: int, n_pairs: int, m: torch.Tensor) -> torch.Tensor:
    """Row action of one stage, out of place: ``[v_i, v_j] ← [v_i, v_j] M`` on its active pairs only."""
    step, span = 2 * stride, 2 * stride * n_pairs
    vi, vj = v[..., 0:span:step], v[..., stride:span:step]
    out = v.clone()
    out[..., 0:span:step] = vi * m[..., 0, 0] + vj * m[..., 1, 0]
    out[..., stride:span:step] = vi * m[..., 0, 1] + vj * m[..., 1, 1]
    return out


def rotate_rows_reference(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``x R`` stage by stage with plain autograd: the naive reference (slow, memory-hungry)."""
    plan = stage_plan(x.shape[-1])
    for stage in reversed(plan):  # x R = x P_L ⋯ P_1: stage L acts first
        m = blocks[stage.offset : stage.offset + stage.n_pairs]
        x = _apply_stage(x, stage.stride, stage.n_pairs, m)
    return x


# ---------------------------------------------------------------------------------------------------------------
# Two-level factorisation R = Top · Low
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How a width ``d`` splits into diagonal blocks (low stages) and block leaders (top stages)."""

    d: int
    block: int
    n_full: int  # number of full diagonal blocks
    tail: int  # width of the last, partial block (0 if none)
    n_low: int  # stages that act inside blocks
    n_top: int  # number of block leaders (columns 0, block, 2·block, …)

    @property
    def full_width(self) -> int:
        return self.n_full * self.block


@functools.lru_cache(maxsize=None)
def layout(d: int, block: int = BLOCK) -> Layout:
    plan = stage_plan(d)
    n_low = min(len(plan), int(math.log2(block)))
    return Layout(d, block, d // block, d % block, n_low, -(-d // block))


@dataclass
class Factors:
    """Dense pieces of a product of stages: block-diagonal ``low`` and the ``top`` matrix on block leaders.

    ``top_first`` says which acts first on rows: ``x F = (x Top) Low`` if True, ``(x Low) Top`` if False.
    """

    low_full: torch.Tensor | None  # (n_full, block, block)
    low_tail: torch.Tensor | None  # (tail, tail)
    top: torch.Tensor | None  # (n_top, n_top)
    top_first: bool = True

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.low_full, self.low_tail, self.top) if t is not None]


def _compose(width: int, batch: tuple[int, ...], stages, reverse: bool, like: torch.Tensor):
    """Dense product of ``stages`` (list of (stride, n_pairs, blocks-of-that-stage)) applied to identity rows."""
    v = torch.eye(width, dtype=like.dtype, device=like.device).expand(*batch, width, width)
    for stride, n_pairs, m in reversed(stages) if reverse else stages:
        if n_pairs:
            v = _apply_stage(v, stride, n_pairs, m)
    return v


def build_factors(blocks: torch.Tensor, d: int, inverse: bool = False, block: int = BLOCK) -> Factors:
    """Factors of ``R = Top · Low`` (or of ``R⁻¹ = Low⁻¹ · Top⁻¹`` when ``inverse``) from the 2×2 blocks."""
    lay, plan = layout(d, block), stage_plan(d)
    if inverse:
        blocks = invert_blocks(blocks)
    # R = P_L ⋯ P_1 acts on rows from stage L down; R⁻¹ = P_1⁻¹ ⋯ P_L⁻¹ from stage 1 up.
    reverse = not inverse
    low_full = low_tail = top = None
    if lay.n_full:
        stages = []
        for stage in plan[: lay.n_low]:
            per_block = lay.block // (2 * stage.stride)
            m = blocks[stage.offset : stage.offset + lay.n_full * per_block]
            stages.append((stage.stride, per_block, m.reshape(lay.n_full, 1, per_block, 2, 2)))
        low_full = _compose(lay.block, (lay.n_full,), stages, reverse, blocks)
    if lay.tail >= 2:
        stages = []
        for stage, tail_stage in zip(plan[: lay.n_low], stage_plan(lay.tail)):
            start = stage.offset + lay.n_full * (lay.block // (2 * stage.stride))
            stages.append((stage.stride, tail_stage.n_pairs, blocks[start : start + tail_stage.n_pairs]))
        low_tail = _compose(lay.tail, (), stages, reverse, blocks)
    if lay.n_top >= 2:
        stages = []
        for stage, top_stage in zip(plan[lay.n_low :], stage_plan(lay.n_top)):
            m = blocks[stage.offset : stage.offset + stage.n_pairs]
            stages.append((top_stage.stride, top_stage.n_pairs, m))
        top = _compose(lay.n_top, (), stages, reverse, blocks)
    return Factors(low_full, low_tail, top, top_first=not inverse)


def _transposed(f: Factors) -> Factors:
    t = lambda m: None if m is None else m.transpose(-1, -2)  # noqa: E731
    return Factors(t(f.low_full), t(f.low_tail), t(f.top), top_first=not f.top_first)


def _apply_low(x2d: torch.Tensor, f: Factors, lay: Layout) -> torch.Tensor:
    """Block-diagonal part, out of place; ``x2d`` is ``(T, d)``."""
    out = torch.empty_like(x2d)
    tokens = x2d.shape[0]
    if f.low_full is not None:
        full = lay.full_width
        blocks_in = x2d[:, :full].reshape(tokens, lay.n_full, lay.block).transpose(0, 1)
        scratch = torch.bmm(blocks_in, f.low_full)  # (n_full, T, block)
        out[:, :full].view(tokens, lay.n_full, lay.block).copy_(scratch.transpose(0, 1))
    if f.low_tail is not None:
        out[:, lay.full_width :] = x2d[:, lay.full_width :] @ f.low_tail
    elif lay.tail == 1:
        out[:, lay.full_width :] = x2d[:, lay.full_width :]
    return out


def _apply_top_(x2d: torch.Tensor, f: Factors, lay: Layout) -> torch.Tensor:
    """Top part, in place on the block leaders of ``x2d``."""
    if f.top is not None:
        leaders = x2d[:, :: lay.block]
        leaders.copy_(leaders @ f.top)
    return x2d


def apply_factors(x2d: torch.Tensor, f: Factors, transpose: bool = False, block: int = BLOCK) -> torch.Tensor:
    """``x F`` (or ``x Fᵀ``) for rows ``x2d`` of shape ``(T, d)``; returns a new tensor."""
    lay = layout(x2d.shape[-1], block)
    if transpose:
        f = _transposed(f)
    if f.top_first:
        return _apply_low(_apply_top_(x2d.clone(), f, lay), f, lay)
    return _apply_top_(_apply_low(x2d, f, lay), f, lay)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Rotations run in fp32 for half-precision inputs, else in the input's own precision."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


# ---------------------------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------------------------


class _RotateRows(torch.autograd.Function):
    """``x ↦ x R`` for ``x`` of shape ``(T, d)`` and 2×2 ``blocks`` of shape ``(d − 1, 2, 2)``.

    ``orthogonal=True`` (strict): only the output is saved; backward recovers the input exactly with ``Rᵀ``.
    ``orthogonal=False`` (quasi): the input is saved and the intermediate recomputed.
    The dense factors are rebuilt from ``blocks`` in backward (they are tiny) instead of being saved.
    """

    @staticmethod
    def forward(ctx, x2d, blocks, orthogonal):
        work = compute_dtype(x2d.dtype)
        with torch.no_grad():
            f = build_factors(blocks.to(work), x2d.shape[-1])
            out = apply_factors(x2d.to(work), f).to(x2d.dtype)
        ctx.orthogonal = orthogonal
        ctx.save_for_backward(out if orthogonal else x2d, blocks)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        saved, blocks = ctx.saved_tensors
        need_x, need_blocks = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        work = compute_dtype(saved.dtype)
        lay = layout(saved.shape[-1])
        with torch.enable_grad():
            leaf = blocks.detach().to(work).requires_grad_(need_blocks)
            f = build_factors(leaf, lay.d)
        with torch.no_grad():
            g = grad_out.to(work)
            if ctx.orthogonal:
                mid = _apply_low(saved.to(work), _transposed(f), lay)  # input of Low, recovered by Lowᵀ
                leaders_in = mid[:, :: lay.block] @ f.top.t() if f.top is not None else None
            else:
                x = saved.to(work)
                leaders_in = x[:, :: lay.block]
                mid = _apply_top_(x.clone(), f, lay)
            grad_mid = _apply_low(g, _transposed(f), lay)
            grads = _factor_grads(mid, g, grad_mid, leaders_in, f, lay) if need_blocks else None
            grad_x = None
            if need_x:
                grad_x = grad_mid
                if f.top is not None:
                    leaders = grad_x[:, :: lay.block]
                    leaders.copy_(leaders @ f.top.t())
                grad_x = grad_x.to(saved.dtype)
        grad_blocks = None
        if need_blocks:
            grad_blocks = torch.autograd.grad(f.tensors(), leaf, grads)[0].to(blocks.dtype)
        return grad_x, grad_blocks, None


def _factor_grads(mid, g, grad_mid, leaders_in, f: Factors, lay: Layout) -> list[torch.Tensor]:
    """Gradients of the loss w.r.t. the dense factors, in the order of ``Factors.tensors()``."""
    grads, tokens = [], mid.shape[0]
    if f.low_full is not None:
        full = lay.full_width
        mid_b = mid[:, :full].reshape(tokens, lay.n_full, lay.block).transpose(0, 1)
        g_b = g[:, :full].reshape(tokens, lay.n_full, lay.block).transpose(0, 1)
        grads.append(torch.bmm(mid_b.transpose(1, 2), g_b))
    if f.low_tail is not None:
        grads.append(mid[:, lay.full_width :].t() @ g[:, lay.full_width :])
    if f.top is not None:
        grads.append(leaders_in.t() @ grad_mid[:, :: lay.block])
    return grads


def rotate_rows(x: torch.Tensor, blocks: torch.Tensor, orthogonal: bool) -> torch.Tensor:
    """``x R`` over the last dimension of ``x`` (any leading shape); differentiable in ``x`` and ``blocks``."""
    d = x.shape[-1]
    if blocks.shape != (d - 1, 2, 2):
        raise ValueError(f"Expected blocks of shape ({d - 1}, 2, 2) for width {d}, got {tuple(blocks.shape)}.")
    out = _RotateRows.apply(x.reshape(-1, d), blocks, orthogonal)
    return out.reshape(x.shape)


# ---------------------------------------------------------------------------------------------------------------
# Dense matrices and merging
# ---------------------------------------------------------------------------------------------------------------


def dense_rotation(blocks: torch.Tensor, d: int) -> torch.Tensor:
    """The dense ``d × d`` matrix ``R`` (= ``I R``), in the precision of ``blocks``."""
    f = build_factors(blocks, d)
    return apply_factors(torch.eye(d, dtype=blocks.dtype, device=blocks.device), f)


def rotate_weight(weight_nd: torch.Tensor, blocks: torch.Tensor, orthogonal: bool, inverse: bool = False):
    """Merge ``W ← W Rᵀ``; with ``inverse``, unmerge ``W ← W (Rᵀ)⁻¹`` (``W R`` when orthogonal). ``W`` is (n, d)."""
    d = weight_nd.shape[-1]
    if not inverse:
        return apply_factors(weight_nd, build_factors(blocks, d), transpose=True)
    if orthogonal:  # (Rᵀ)⁻¹ = R, exactly: never a general inverse
        return apply_factors(weight_nd, build_factors(blocks, d))
    # (Rᵀ)⁻¹ = (R⁻¹)ᵀ with R⁻¹ built from the inverted 2×2 blocks
    return apply_factors(weight_nd, build_factors(blocks, d, inverse=True), transpose=True)


def orthogonality_defect(blocks: torch.Tensor, d: int) -> float:
    """``max |Rᵀ R − I|`` of the rotation the layer applies, in O(d·BLOCK) instead of a dense O(d³) product.

    ``R = Top · Low`` gives ``RᵀR − I = (LowᵀLow − I) + U (TopᵀTop − I) Uᵀ``, where column ``m`` of ``U`` is the
    first row ``u_m`` of diagonal block ``m`` (its leader). Off the diagonal blocks an entry is
    ``u_m[i] E[m, n] u_n[j]``, whose largest magnitude is ``|E[m, n]| max|u_m| max|u_n|``.
    The factors are built in the precision of ``blocks`` (the layer's), then checked in float64.
    """
    f64 = dict(dtype=torch.float64, device=blocks.device)
    lay = layout(d)
    f = build_factors(blocks, d)
    diagonal = []  # (low block, its u) for each block, in order
    if f.low_full is not None:
        diagonal += list(f.low_full.double())
    if f.low_tail is not None:
        diagonal.append(f.low_tail.double())
    elif lay.tail == 1:
        diagonal.append(torch.ones(1, 1, **f64))
    top_gram = None
    if f.top is not None:
        top = f.top.double()
        top_gram = top.t() @ top - torch.eye(lay.n_top, **f64)
    worst = 0.0
    for m, low in enumerate(diagonal):
        defect = low.t() @ low - torch.eye(low.shape[0], **f64)
        if top_gram is not None:
            defect = defect + top_gram[m, m] * torch.outer(low[0], low[0])
        worst = max(worst, float(defect.abs().max()))
    if top_gram is not None:
        u_max = torch.stack([low[0].abs().max() for low in diagonal])
        off = top_gram.abs() * torch.outer(u_max, u_max)
        off.fill_diagonal_(0)
        worst = max(worst, float(off.max()))
    return worst
