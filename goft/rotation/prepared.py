"""A rotation prepared once and applied to many inputs: its dense factors built from the 2×2 blocks and kept.

Training builds the factors from the parameters at every call, because autograd differentiates through them. While
the parameters stand still (evaluation, generation: one token per call), the factors are the same at every call, so
a prepared rotation builds them once. Applying it runs exactly the operations ``backend.rotate_rows`` runs on the
same path (the Triton kernels or PyTorch, chosen for the inputs the rotation is prepared for), so the outputs are
the same bit for bit; it has no autograd and is meant for inputs and parameters that need no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from goft.rotation.backend import check_rotation_shapes, fused_rotation_for
from goft.rotation.givens import Layout, build_factors, compute_dtype, layout


@dataclass(frozen=True)
class BlockRotation:
    """``(x R) ⊙ s`` as the PyTorch path of a prepared rotation applies it, per diagonal block ``b``:
    ``x_b (Low_b diag s_b) + shift_b · (first row of Low_b diag s_b)``, where ``shift = x_leaders (Top − I)`` is how
    far Top moves each block's leader (GOFT Eq. 2–3 multiplied out, the GOFT* scale of §5.5 folded into the blocks).
    """

    layout: Layout
    low_full: torch.Tensor | None  # (n_full, B, B), columns scaled
    low_tail: torch.Tensor | None  # (tail, tail), columns scaled
    top_shift: torch.Tensor | None  # Top − I, (n_top, n_top)
    lone_scale: torch.Tensor | None  # the scale of a lone last coordinate (a tail of 1)
    first_rows: torch.Tensor | None  # the first row of each full block, (n_full, B)

    @classmethod
    def build(cls, blocks: torch.Tensor, scale: torch.Tensor | None, width: int) -> BlockRotation:
        lay = layout(width)
        f = build_factors(blocks, width)
        low_full, low_tail, lone_scale = f.low_full, f.low_tail, None
        if scale is not None:
            if low_full is not None:
                low_full = low_full * scale[: lay.full_width].view(lay.n_full, 1, lay.block)
            if low_tail is not None:
                low_tail = low_tail * scale[lay.full_width :]
            elif lay.tail == 1:
                lone_scale = scale[-1:]
        top_shift = None
        if f.top is not None:
            top_shift = f.top - torch.eye(lay.n_top, dtype=f.top.dtype, device=f.top.device)
        first_rows = None if low_full is None else low_full[:, 0, :].contiguous()
        return cls(lay, low_full, low_tail, top_shift, lone_scale, first_rows)

    def __call__(self, x2d: torch.Tensor) -> torch.Tensor:
        lay, tokens = self.layout, x2d.shape[0]
        shift = x2d[:, :: lay.block] @ self.top_shift if self.top_shift is not None else None
        parts = []
        if self.low_full is not None:
            parts.append(self._full_blocks(x2d[:, : lay.full_width], shift, tokens))
        if self.low_tail is not None:
            tail = x2d[:, lay.full_width :] @ self.low_tail
            if shift is not None:
                tail.addmm_(shift[:, -1:], self.low_tail[:1, :])
            parts.append(tail)
        elif lay.tail == 1:
            lone = x2d[:, -1:] if shift is None else x2d[:, -1:] + shift[:, -1:]
            parts.append(lone if self.lone_scale is None else lone * self.lone_scale)
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    def _full_blocks(self, x_full: torch.Tensor, shift: torch.Tensor | None, tokens: int) -> torch.Tensor:
        lay, low = self.layout, self.low_full
        if tokens == 1:  # one token (decoding): a product and a sum cost less than a batched matmul's set-up
            out = (x_full.reshape(lay.n_full, lay.block, 1) * low).sum(1)
            if shift is not None:
                out.addcmul_(shift.view(-1, 1)[: lay.n_full], self.first_rows)
            return out.view(1, lay.full_width)
        out = torch.bmm(x_full.reshape(tokens, lay.n_full, lay.block).transpose(0, 1), low)
        if shift is not None:
            out.addcmul_(shift[:, : lay.n_full].t()[:, :, None], low[:, :1, :])
        return out.transpose(0, 1).reshape(tokens, lay.full_width)


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
