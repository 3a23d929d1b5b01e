"""The orthogonality regulariser of HRA (Yuan et al., arXiv 2405.17484) for peft's built-in HRA adapters."""

from __future__ import annotations

import torch
from peft.tuners.hra import HRALayer
from torch import nn

from .orthogonality import defect_norm
from .sharded import whole


def hra_orthogonality(model: nn.Module) -> torch.Tensor:
    """``Σ_layers ‖I_r − ÛᵀÛ‖_F`` over the active HRA adapters, Û the unit-normalised reflection vectors (Yuan et al.
    2024; Frobenius, not squared, as in the authors' code), differentiable. Adapters with Gram-Schmidt are skipped:
    their reflections are orthogonalised in the forward pass already."""
    terms = []
    for layer in model.modules():
        if not isinstance(layer, HRALayer) or layer.disable_adapters:
            continue
        for name in layer.active_adapters:
            if name not in layer.hra_u or layer.hra_apply_GS.get(name, False):
                continue
            vectors = whole(layer.hra_u[name])
            unit = vectors / vectors.norm(dim=0, keepdim=True)
            eye = torch.eye(unit.shape[1], device=unit.device, dtype=unit.dtype)
            terms.append(defect_norm(eye - unit.t() @ unit))
    if not terms:
        return torch.zeros(())
    return torch.stack([t.to(terms[0].device) for t in terms]).sum()
