"""Measuring orthogonality: the model-wide error of the exactly-orthogonal Givens adapters, and the norm of an
orthonormality defect that the regularisers (`goft.regularizers`) are built from."""

from __future__ import annotations

import torch
from peft.utils.integrations import gather_params_ctx
from torch import nn

from goft.rotation.givens import compute_dtype, orthogonality_defect
from goft.tuners.givens.layer import GivensLayer


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
