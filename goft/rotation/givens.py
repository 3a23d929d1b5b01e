"""The Givens rotation of GOFT: stage plan, fast application, autograd, dense matrices. No peft here.

Notation (Ma et al., ICML 2024): a Linear weight ``W`` is ``(n, d)`` and the adapted layer computes
``y = W Rᵀ x`` with ``R = P_L ⋯ P_1``. Tokens are rows in PyTorch, so every function here computes the
row-vector form ``x R`` (which equals ``(Rᵀ x)ᵀ``).

Each Givens pair carries a 2×2 block ``M``; a stage maps a row's pair ``[v_i, v_j] ← [v_i, v_j] M``
(that is ``Mᵀ`` acting on the column ``[x_i, x_j]``). Strict GOFT uses ``M = [[cos θ, −sin θ], [sin θ, cos θ]]``
(Eq. 1); quasi GOFT uses a free ``M`` (Eq. 5). Both share every code path below.

Speed: the first ``log2(B)`` stages only mix coordinates inside aligned blocks of ``B`` columns, so they
compose into small dense ``B × B`` matrices applied as one batched matmul; the remaining stages act on the
``ceil(d / B)`` block leaders only (every ``B``-th column) and compose into one small dense matrix. No step
makes a full-length pass over ``x`` per stage. ``B`` is picked per width to balance the two parts
(``block_width``); it changes only how the product is evaluated, never the parameters or the result.

Why this module is long: the stage plan, the factors built from it, the autograd that differentiates through them
and the dense matrices used to merge are one derivation over the same index arithmetic (``Layout``, the path
products); apart, each piece would have to restate the others' conventions. The Triton path (``fused``) reuses it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

BLOCK_CHOICES = (16, 32, 64, 128)  # candidate widths of the diagonal blocks; powers of two


@dataclass(frozen=True)
class RotationStage:
    """One stage of the plan: pairs ``(2k·stride, (2k+1)·stride)`` for ``k < n_pairs``."""

    stride: int
    n_pairs: int
    offset: int  # position of this stage's first block in the stage-major parameter layout


@functools.cache
def stage_plan(d: int) -> tuple[RotationStage, ...]:
    """The binary reduction tree with carry: ``d − 1`` rotations in ``ceil(log2 d)`` stages (GOFT, Eq. 2–3)."""
    if not isinstance(d, int) or d < 2:
        raise ValueError(f"A Givens rotation needs a width d >= 2, got {d!r}.")
    stages, active, stride, offset = [], d, 1, 0
    while active > 1:
        n_pairs = active // 2  # an unpaired last active index carries to the next stage
        stages.append(RotationStage(stride, n_pairs, offset))
        offset, active, stride = offset + n_pairs, (active + 1) // 2, stride * 2
    return tuple(stages)


def givens_blocks(theta: torch.Tensor) -> torch.Tensor:
    """Strict 2×2 blocks ``[[cos θ, −sin θ], [sin θ, cos θ]]`` from angles, shape ``(..., 2, 2)`` (Eq. 1)."""
    cos, sin = torch.cos(theta), torch.sin(theta)
    return torch.stack((cos, -sin, sin, cos), -1).unflatten(-1, (2, 2))


def angles_from_raw(raw: torch.Tensor, max_angle: float = math.pi) -> torch.Tensor:
    """``θ = θ_max · tanh(a)``: angles bounded by ``θ_max`` (π by default), ``a = 0`` is the identity."""
    return max_angle * torch.tanh(raw)


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


@functools.cache
def block_width(d: int) -> int:
    """The block width ``B`` with the least work per token: ``d·B`` (diagonal blocks) plus ``(d / B)²`` (leaders)."""
    return min(BLOCK_CHOICES, key=lambda b: (d * b + (d / b) ** 2, b))


@functools.cache
def layout(d: int, block: int | None = None) -> Layout:
    block = block or block_width(d)
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


ONE, ZERO = -2, -1  # path-index placeholders for the constants appended after the flattened blocks


def _path_index(width: int, stage_slots: list[torch.Tensor]) -> torch.Tensor:
    """Where each entry of a composed factor comes from (GOFT Eq. 2–3 multiplied out).

    The product of the first ``len(stage_slots)`` stages of ``stage_plan(width)``, applied to rows from the last
    stage to the first, has entry ``(a, c)`` equal to one product of one 2×2-block entry per stage: the path from
    input ``a`` to output ``c`` is unique, because the stage of stride ``2^ℓ`` can only change bit ``ℓ`` of a
    position, and only while the bits below it are zero. ``stage_slots[ℓ]`` (``(*batch, n_pairs)``) numbers that
    stage's blocks in the flattened parameters; returns a ``(*batch, width, width, n_stages)`` index into
    ``[blocks.flatten(), 1, 0]``: a stage that leaves the path alone contributes the 1, an unreachable entry the 0.
    """
    a, c = torch.arange(width)[:, None], torch.arange(width)[None, :]
    batch = stage_slots[0].shape[:-1]
    index = torch.empty(*batch, width, width, len(stage_slots), dtype=torch.long)
    reachable = (a >> len(stage_slots)) == (c >> len(stage_slots))
    for level, (stage, slots) in enumerate(zip(stage_plan(width), stage_slots)):  # stage.stride == 2 ** level
        a_bit, c_bit, pair = (a >> level) & 1, (c >> level) & 1, c >> (level + 1)
        moves = (a % stage.stride == 0) & (pair < stage.n_pairs)
        entry = 4 * slots[..., pair.clamp(max=stage.n_pairs - 1).expand(width, width)] + 2 * a_bit + c_bit
        index[..., level] = torch.where(moves, entry, ONE)
        reachable &= moves | (a_bit == c_bit)
    index[..., 0] = torch.where(reachable, index[..., 0], ZERO)
    return index


@functools.cache
def _factor_indices(d: int, block: int, device: torch.device) -> tuple[torch.Tensor | None, ...]:
    """Path indices of ``(low_full, low_tail, top)`` into ``[blocks.flatten(), 1, 0]`` for width ``d``."""
    lay, plan = layout(d, block), stage_plan(d)
    low_full = low_tail = top = None
    if lay.n_full:
        slots = []
        for stage in plan[: lay.n_low]:
            per_block = lay.block // (2 * stage.stride)
            slots.append(stage.offset + torch.arange(lay.n_full * per_block).view(lay.n_full, per_block))
        low_full = _path_index(lay.block, slots)
    if lay.tail >= 2:
        slots = [
            stage.offset + lay.n_full * (lay.block // (2 * stage.stride)) + torch.arange(tail_stage.n_pairs)
            for stage, tail_stage in zip(plan[: lay.n_low], stage_plan(lay.tail))
        ]
        low_tail = _path_index(lay.tail, slots)
    if lay.n_top >= 2:
        slots = [
            stage.offset + torch.arange(top_stage.n_pairs)
            for stage, top_stage in zip(plan[lay.n_low :], stage_plan(lay.n_top))
        ]
        top = _path_index(lay.n_top, slots)
    constants = 4 * (d - 1)
    with torch.inference_mode(False):  # cached: must stay usable by autograd even if first made for inference
        return tuple(
            None if i is None else torch.where(i < 0, constants + 2 + i, i).to(device)
            for i in (low_full, low_tail, top)
        )


@functools.cache
def _one_and_zero(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The constants appended to the flattened blocks, made once per device (no host-to-device copy per call)."""
    with torch.inference_mode(False):  # cached: must stay usable by autograd even if first made for inference
        return torch.tensor([1.0, 0.0], dtype=dtype, device=device)


def path_values(blocks: torch.Tensor, d: int, block: int | None = None) -> list[torch.Tensor | None]:
    """The entries along every path of ``(low_full, low_tail, top)``: ``(*batch, W, W, n_stages)`` each, or None."""
    flat = torch.cat((blocks.reshape(-1), _one_and_zero(blocks.dtype, blocks.device)))
    return [
        None if index is None else flat.index_select(0, index.flatten()).view(index.shape)
        for index in _factor_indices(d, layout(d, block).block, blocks.device)
    ]


def build_factors(blocks: torch.Tensor, d: int, inverse: bool = False, block: int | None = None) -> Factors:
    """Factors of ``R = Top · Low`` (or of ``R⁻¹ = Low⁻¹ · Top⁻¹`` when ``inverse``) from the 2×2 blocks."""
    if inverse:
        # R⁻¹ = P_1⁻¹ ⋯ P_L⁻¹ is the transpose of the forward-order product of the transposed inverse blocks
        return _transposed(build_factors(invert_blocks(blocks).transpose(-1, -2), d, block=block))
    return Factors(*(None if values is None else values.prod(-1) for values in path_values(blocks, d, block)))


def blocks_grad(blocks: torch.Tensor, d: int, entries, factor_grads, block: int | None = None) -> torch.Tensor:
    """``∂L/∂blocks`` from the gradients of ``(low_full, low_tail, top)`` (``entries`` from ``path_values`` with the
    same ``block``): an entry of a factor is a product along its path, so it passes its gradient to each entry on the
    path times the product of the path's other entries."""
    grad_flat = blocks.new_zeros(blocks.numel() + 2)
    for index, values, grad in zip(_factor_indices(d, layout(d, block).block, blocks.device), entries, factor_grads):
        if index is None:
            continue
        before = torch.cumprod(values, -1)  # products of the entries up to each stage, and after it
        after = torch.cumprod(values.flip(-1), -1).flip(-1)
        others = torch.ones_like(values)
        others[..., 1:] = before[..., :-1]
        others[..., :-1] *= after[..., 1:]
        grad_flat.index_add_(0, index.flatten(), (others * grad[..., None]).flatten())
    return grad_flat[:-2].view_as(blocks)


def _transposed(f: Factors) -> Factors:
    t = lambda m: None if m is None else m.transpose(-1, -2)  # noqa: E731
    return Factors(t(f.low_full), t(f.low_tail), t(f.top), top_first=not f.top_first)


def _full_blocks(rows: torch.Tensor, lay: Layout) -> torch.Tensor:
    """The full diagonal blocks of ``rows`` (T, d) as a ``(n_full, T, block)`` view (no copy)."""
    return rows[:, : lay.full_width].reshape(rows.shape[0], lay.n_full, lay.block).transpose(0, 1)


def _apply_low(x2d: torch.Tensor, f: Factors, lay: Layout, leaders: torch.Tensor | None = None) -> torch.Tensor:
    """Block-diagonal part, out of place; ``x2d`` is ``(T, d)``.

    ``leaders`` (T, n_top), if given, replace the leader columns of ``x2d`` first, without copying ``x2d``: each
    block's product gets the rank-one correction ``(new − old leader) ⊗ (first row of its Low block)``.
    """
    out = torch.empty_like(x2d)
    tokens, full = x2d.shape[0], lay.full_width
    shift = None if leaders is None else leaders - x2d[:, :: lay.block]
    if f.low_full is not None:
        scratch = torch.bmm(_full_blocks(x2d, lay), f.low_full)  # (n_full, T, block)
        if shift is not None:
            scratch.addcmul_(shift[:, : lay.n_full].t()[:, :, None], f.low_full[:, :1, :])
        out[:, :full].view(tokens, lay.n_full, lay.block).copy_(scratch.transpose(0, 1))
    if f.low_tail is not None:
        tail = x2d[:, full:] @ f.low_tail
        if shift is not None:
            tail.addmm_(shift[:, -1:], f.low_tail[:1, :])
        out[:, full:] = tail
    elif lay.tail == 1:
        out[:, full:] = x2d[:, full:] if leaders is None else leaders[:, -1:]
    return out


def _apply_top_(x2d: torch.Tensor, f: Factors, lay: Layout) -> torch.Tensor:
    """Top part, in place on the block leaders of ``x2d``."""
    if f.top is not None:
        leaders = x2d[:, :: lay.block]
        leaders.copy_(leaders @ f.top)
    return x2d


def apply_factors(x2d: torch.Tensor, f: Factors, transpose: bool = False, block: int | None = None) -> torch.Tensor:
    """``x F`` (or ``x Fᵀ``) for rows ``x2d`` of shape ``(T, d)``; returns a new tensor. ``block`` as in ``f``."""
    lay = layout(x2d.shape[-1], block)
    if transpose:
        f = _transposed(f)
    if f.top_first:
        leaders = x2d[:, :: lay.block] @ f.top if f.top is not None else None
        return _apply_low(x2d, f, lay, leaders)
    return _apply_top_(_apply_low(x2d, f, lay), f, lay)


KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # the activation dtypes the fused kernels rotate


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Rotations run in fp32 for half-precision inputs, else in the input's own precision."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def rotate_with_factors(x2d: torch.Tensor, f: Factors, scale: torch.Tensor | None) -> torch.Tensor:
    """``(x R) ⊙ s`` from factors built in ``compute_dtype(x2d.dtype)``, returned in the dtype of ``x2d``."""
    work = compute_dtype(x2d.dtype)
    out = apply_factors(x2d.to(work), f)
    if scale is not None:
        out.mul_(scale.to(work))  # GOFT* (§5.5): the rotated input scaled per coordinate
    return out.to(x2d.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------------------------


class _RotateRows(torch.autograd.Function):
    """``x ↦ (x R) ⊙ s`` for ``x`` of shape ``(T, d)``, 2×2 ``blocks`` of shape ``(d − 1, 2, 2)`` and an optional
    GOFT* scale ``s`` of shape ``(d,)``.

    Only the input is saved (no intermediate): layers that share an input (q/k/v, gate/up) then share what they
    save, as LoRA's do. The dense factors are rebuilt from ``blocks`` in backward (they are tiny).
    """

    @staticmethod
    def forward(ctx, x2d, blocks, scale):
        work = compute_dtype(x2d.dtype)
        with torch.no_grad():
            out = rotate_with_factors(x2d, build_factors(blocks.to(work), x2d.shape[-1]), scale)
        ctx.save_for_backward(x2d, blocks, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x2d, blocks, scale = ctx.saved_tensors
        need_x, need_blocks, need_scale = ctx.needs_input_grad
        work = compute_dtype(x2d.dtype)
        lay = layout(x2d.shape[-1])
        work_blocks = blocks.to(work)
        values = path_values(work_blocks, lay.d)
        f = Factors(*(None if v is None else v.prod(-1) for v in values))
        g = grad_out.to(work)  # gradient at the (scaled) output
        g_rotated = g if scale is None else g * scale.to(work)  # gradient at x R
        grad_mid = _apply_low(g_rotated, _transposed(f), lay)  # gradient at mid = x Top, the input of Low
        grad_blocks = grad_scale = None
        if need_blocks or need_scale:
            # with the unscaled g, the Low grams give both the scale's gradient and (column-scaled) Low's own
            x = x2d.to(work)
            grams = _factor_grads(x, g, grad_mid, f, lay)
            if scale is not None:
                grad_scale = _scale_grad(x, grams, f, lay, g).to(scale.dtype)
                grams = _scale_columns(grams, scale.to(work), lay)
            if need_blocks:
                grad_blocks = blocks_grad(work_blocks, lay.d, values, grams).to(blocks.dtype)
        grad_x = None
        if need_x:
            if f.top is not None:
                leaders = grad_mid[:, :: lay.block]
                leaders.copy_(leaders @ f.top.t())
            grad_x = grad_mid.to(x2d.dtype)
        return grad_x, grad_blocks, grad_scale


def _scale_grad(x2d, grams, f: Factors, lay: Layout, g) -> torch.Tensor:
    """``∂L/∂s_j = Σ_t (x R)_tj g_tj``; inside block ``b`` that is column ``j`` of ``Low_b ⊙ (mid_bᵀ g_b)`` summed."""
    parts = []
    if f.low_full is not None:
        parts.append((f.low_full * grams[0]).sum(-2).reshape(-1))
    if f.low_tail is not None:
        parts.append((f.low_tail * grams[1]).sum(-2))
    elif lay.tail == 1:  # a lone last coordinate: (x R) there is its leader after Top
        last = x2d[:, :: lay.block] @ f.top[:, -1] if f.top is not None else x2d[:, -1]
        parts.append((last * g[:, -1]).sum().reshape(1))
    return torch.cat(parts)


def _scale_columns(grams, scale, lay: Layout):
    """Low's gradients ``mid_bᵀ (g ⊙ s)_b`` from the unscaled grams ``mid_bᵀ g_b``."""
    low_full, low_tail, top = grams
    if low_full is not None:
        low_full = low_full * scale[: lay.full_width].view(lay.n_full, 1, lay.block)
    if low_tail is not None:
        low_tail = low_tail * scale[lay.full_width :]
    return [low_full, low_tail, top]


def _factor_grads(x2d, g, grad_mid, f: Factors, lay: Layout) -> list[torch.Tensor]:
    """Gradients w.r.t. the dense factors ``(low_full, low_tail, top)``, None for an absent one.

    Block ``b`` of Low gets ``mid_bᵀ g_b`` with ``mid = x Top``; ``mid_b`` equals ``x_b`` except on its leader
    column, so this is ``x_bᵀ g_b`` plus a correction of the first row, and ``mid`` is never formed.
    """
    x_leaders = x2d[:, :: lay.block]
    shift = x_leaders @ f.top - x_leaders if f.top is not None else None
    grads = [None, None, None]
    if f.low_full is not None:
        g_blocks = _full_blocks(g, lay)
        gram = torch.bmm(_full_blocks(x2d, lay).transpose(1, 2), g_blocks)
        if shift is not None:
            # contiguous rows: bmm with one strided row per batch falls back to a slow per-batch loop
            gram[:, 0, :] += torch.bmm(shift[:, : lay.n_full].t().contiguous()[:, None, :], g_blocks)[:, 0, :]
        grads[0] = gram
    if f.low_tail is not None:
        g_tail = g[:, lay.full_width :]
        gram = x2d[:, lay.full_width :].t() @ g_tail
        if shift is not None:
            gram[0, :] += shift[:, -1] @ g_tail
        grads[1] = gram
    if f.top is not None:
        grads[2] = x_leaders.t() @ grad_mid[:, :: lay.block]
    return grads


def rotate_rows_torch(x2d: torch.Tensor, blocks: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """The PyTorch path of ``rotate_rows`` for rows ``(T, d)``, whatever the device: the kernels' reference."""
    return _RotateRows.apply(x2d, blocks, scale)


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
