"""Model-wide orthogonality diagnostics and the qGOFT penalty."""

from __future__ import annotations

import torch
from peft.utils.integrations import gather_params_ctx
from torch import nn

from .givens import compute_dtype, orthogonality_defect
from .layer import GivensLayer
from .sharded import whole


def defect_norm(defect: torch.Tensor) -> torch.Tensor:
    """``‖D‖_F`` of an orthonormality defect ``D = QᵀQ − I`` (k×k), with a gradient that means something.

    The norm is not differentiable at ``D = 0``, and for a ``Q`` that is orthonormal up to round-off, ``D/‖D‖`` points
    in a direction set by rounding errors alone. Below the round-off level of computing ``D`` (16·k·eps of its dtype)
    the gradient is therefore 0, the minimum-norm subgradient at ``D = 0``; the value is exact everywhere.
    """
    squared = defect.pow(2).sum()
    floor = (16 * defect.shape[-1] * torch.finfo(defect.dtype).eps) ** 2
    above = squared > floor
    safe = torch.where(above, squared, torch.ones_like(squared))
    return torch.where(above, safe.sqrt(), squared.detach().sqrt())


def _givens_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, GivensLayer)]


@torch.no_grad()
def orthogonality_error(model: nn.Module, adapter_name: str | None = None) -> float:
    """Largest ``max |Rᵀ R − I|`` over the model's exactly-orthogonal Givens adapters (angles, no scaling).

    Only ``adapter_name`` if given, else every such adapter. 0.0 when there is none.
    """
    worst = 0.0
    for layer in _givens_layers(model):
        for name in layer.givens_angles:
            if not layer.is_orthogonal(name) or (adapter_name is not None and name != adapter_name):
                continue
            with gather_params_ctx(layer.adapter_parameters(name), modifier_rank=None):  # full tensors under ZeRO-3
                blocks, _ = layer.rotation_blocks(name)
                defect = orthogonality_defect(blocks.detach().to(compute_dtype(blocks.dtype)), layer.in_features)
            worst = max(worst, defect)
    return worst


def orthogonality_penalty(model: nn.Module) -> torch.Tensor:
    """The qGOFT soft orthogonality penalty of the active quasi adapters, differentiable (Eq. 6).

    ``Σ_adapters λ · Σ_blocks (M00·M01 + M10·M11)²``: the two columns of each 2×2 block are pushed towards
    orthogonality; their norms stay free. Strict adapters contribute exactly 0.
    """
    total = None
    for layer in _givens_layers(model):
        if layer.disable_adapters:
            continue
        for name in layer.active_adapters:
            weight = layer.givens_penalty_weight.get(name, 0.0)
            if name not in layer.givens_blocks or weight == 0.0:
                continue
            m = whole(layer.givens_blocks[name])
            term = weight * (m[:, 0, 0] * m[:, 0, 1] + m[:, 1, 0] * m[:, 1, 1]).pow(2).sum()
            total = term if total is None else total + term.to(total.device)
    if total is None:
        param = next(model.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)
    return total
