"""A rotation prepared once and applied to many inputs: its dense factors built from the 2×2 blocks and kept.

Training builds the factors from the parameters at every call, because autograd differentiates through them. While
the parameters stand still (evaluation, generation: one token per call), the factors are the same at every call, so
a prepared rotation builds them once, on the path ``backend.rotate_rows`` would take for the inputs it is prepared
for. On the Triton path it keeps the kernels' own forward matrices, so its outputs are those of ``rotate_rows`` bit
for bit. On the PyTorch path it evaluates the same ``R`` with wider diagonal blocks and one product for the block
leaders (fewer operations per token), equal to ``rotate_rows`` up to float rounding (1e-6 in float32, tested). It
has no autograd and is meant for inputs and parameters that need no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from goft.rotation.backend import check_rotation_shapes, fused_rotation_for
from goft.rotation.givens import Layout, build_factors, compute_dtype, layout

PREPARED_BLOCK_CHOICES = (32, 64, 128)  # below 32, a batched matmul of one token costs more than its work


def prepared_block_width(d: int) -> int:
    """The diagonal block width of a prepared rotation: the smallest choice at least ``√d``, so that the blocks
    (``d·B`` entries) and the leaders' rows (``(d / B)·d``) stay of one size, and one token's batched matmul of the
    blocks is no slower than its product with the leaders' rows."""
    return next((b for b in PREPARED_BLOCK_CHOICES if b * b >= d), PREPARED_BLOCK_CHOICES[-1])


@dataclass(frozen=True)
class BlockRotation:
    """``(x R) ⊙ s`` as the PyTorch path of a prepared rotation applies it: ``x_b (Low_b diag s_b)`` for every diagonal
    block ``b``, plus ``x_leaders · Lead``, where row ``m`` of ``Lead`` holds, in block ``b``'s columns,
    ``(Top − I)[m, b]`` times the first row of ``Low_b diag s_b`` (how far Top moves block ``b``'s leader, carried
    through its block). GOFT Eq. 2–3 multiplied out, the GOFT* scale of §5.5 folded in."""

    layout: Layout
    low_full: torch.Tensor | None  # (n_full, B, B), columns scaled
    low_tail: torch.Tensor | None  # (tail, tail), columns scaled
    lone_scale: torch.Tensor | None  # the scale of a lone last coordinate (a tail of 1)
    lead: torch.Tensor | None  # (n_top, d)

    @classmethod
    def build(cls, blocks: torch.Tensor, scale: torch.Tensor | None, width: int) -> BlockRotation:
        lay = layout(width, prepared_block_width(width))
        f = build_factors(blocks, width, block=lay.block)
        low_full, low_tail, lone_scale = f.low_full, f.low_tail, None
        if scale is not None:
            if low_full is not None:
                low_full = low_full * scale[: lay.full_width].view(lay.n_full, 1, lay.block)
            if low_tail is not None:
                low_tail = low_tail * scale[lay.full_width :]
            elif lay.tail == 1:
                lone_scale = scale[-1:]
        lead = None
        if f.top is not None:
            first_rows = f.top.new_zeros(lay.n_top, lay.block)  # the first row of each block's Low, padded
            if low_full is not None:
                first_rows[: lay.n_full] = low_full[:, 0, :]
            if low_tail is not None:
                first_rows[lay.n_full, : lay.tail] = low_tail[0]
            elif lay.tail == 1:
                first_rows[lay.n_full, 0] = 1.0 if lone_scale is None else lone_scale[0]
            shift = f.top - torch.eye(lay.n_top, dtype=f.top.dtype, device=f.top.device)
            lead = (shift[:, :, None] * first_rows[None]).reshape(lay.n_top, -1)[:, :width].contiguous()
        return cls(lay, low_full, low_tail, lone_scale, lead)

    def __call__(self, x2d: torch.Tensor) -> torch.Tensor:
        lay, tokens = self.layout, x2d.shape[0]
        if tokens == 1 and lay.tail == 0 and x2d.is_contiguous():  # one token: (n, 1, B) blocks are views, no copy
            out = torch.bmm(x2d.view(lay.n_full, 1, lay.block), self.low_full).view(1, lay.d)
            return out if self.lead is None else torch.addmm(out, x2d[:, :: lay.block], self.lead)
        parts = []
        if self.low_full is not None:
            full = x2d[:, : lay.full_width] if lay.tail else x2d
            per_block = full.reshape(tokens, lay.n_full, lay.block).transpose(0, 1)
            parts.append(torch.bmm(per_block, self.low_full).transpose(0, 1).reshape(tokens, lay.full_width))
        if self.low_tail is not None:
            parts.append(x2d[:, lay.full_width :] @ self.low_tail)
        elif lay.tail == 1:
            parts.append(x2d[:, -1:] if self.lone_scale is None else x2d[:, -1:] * self.lone_scale)
        out = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        return out if self.lead is None else torch.addmm(out, x2d[:, :: lay.block], self.lead)


@dataclass(frozen=True)
class PreparedRotation:
    """``x ↦ (x R) ⊙ s`` with its matrices built, on the PyTorch path (``blocks``) or the kernels' (``kernel``).
    Applies to inputs of the width, device and dtype it was prepared for."""

    width: int
    device: torch.device
    dtype: torch.dtype
    work: torch.dtype
    blocks: BlockRotation | None = None
    kernel: object | None = None  # fused.ForwardMatrices

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.width or x.dtype != self.dtype:  # the device: any op below would refuse another
            raise ValueError(
                f"This rotation was prepared for width {self.width} ({self.dtype}), not for inputs of width "
                f"{x.shape[-1]} ({x.dtype})."
            )
        x2d = x.reshape(-1, self.width)
        if self.kernel is not None:
            from goft.rotation.fused import rotate_with_matrices

            out = rotate_with_matrices(x2d, self.kernel)
        elif self.work is x.dtype:
            out = self.blocks(x2d)
        else:
            out = self.blocks(x2d.to(self.work)).to(x.dtype)
        return out.reshape(x.shape)


@torch.no_grad()
def prepare_rotation(like: torch.Tensor, blocks: torch.Tensor, scale: torch.Tensor | None = None) -> PreparedRotation:
    """The rotation ``rotate_rows(x, blocks, scale)`` computes, prepared for inputs ``x`` like ``like`` (its width,
    device and dtype pick the path, as they do for ``rotate_rows``)."""
    width = like.shape[-1]
    check_rotation_shapes(width, blocks, scale)
    with torch.inference_mode(False):  # kept: usable outside the inference mode it may first be made in
        if fused_rotation_for(like.reshape(-1, width)) is not None:
            from goft.rotation.fused import forward_matrices, kernel_block_width

            matrices = forward_matrices(blocks, scale, layout(width, kernel_block_width(width)))
            return PreparedRotation(width, like.device, like.dtype, torch.float32, kernel=matrices)
        work = compute_dtype(like.dtype)
        rotation = BlockRotation.build(blocks.to(work), None if scale is None else scale.to(work), width)
        return PreparedRotation(width, like.device, like.dtype, work, blocks=rotation)
