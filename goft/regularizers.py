"""The adapters' training regularisers, in one place and one form.

Each is a function of the model that returns a differentiable scalar over the model's active adapters of its method
(0 when there are none), and `regularizers_for` says which ones a run with a given adapter config trains with, as
`Regularizer`s: the value's log name, its weight in the objective and where it enters (the loss, or SORSA's rule
after gradient clipping; see `goft.training.trainers.regularized`, which applies them).

- qGOFT (Eq. 6): ``Σ_adapters λ · Σ_blocks (M00·M01 + M10·M11)²``; λ is an adapter's own setting
  (``orthogonality_penalty_weight``), so it is applied inside and the `Regularizer`'s weight is 1.
- SORSA (Cao 2024): the mean over adapted layers of ``‖UᵀU − I‖_F + ‖V Vᵀ − I‖_F``, weight γ.
- HRA (Yuan et al. 2024): the sum over adapted layers of ``‖I_r − ÛᵀÛ‖_F``, weight λ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from peft import HRAConfig, PeftConfig
from peft.tuners.hra import HRALayer
from torch import nn

from goft.tuners.givens.config import GivensConfig
from goft.tuners.givens.layer import GivensLayer
from goft.tuners.orthogonality import defect_norm
from goft.tuners.sharded import whole
from goft.tuners.sorsa import SorsaConfig, SorsaLayer


@dataclass(frozen=True)
class Regularizer:
    """``metric``: the log key of the (unweighted) value; ``value(model)``: differentiable scalar; ``weight``: its
    factor in the objective; ``after_clipping``: SORSA's rule instead of a loss term."""

    metric: str
    value: Callable[[nn.Module], torch.Tensor]
    weight: float = 1.0
    after_clipping: bool = False


def _active_adapters(model: nn.Module, layer_type: type):
    """(layer, adapter name) for every active adapter of `layer_type` layers whose adapters are enabled."""
    for layer in model.modules():
        if isinstance(layer, layer_type) and not layer.disable_adapters:
            for name in layer.active_adapters:
                yield layer, name


def _combined(terms: list[torch.Tensor], model: nn.Module, mean: bool = False) -> torch.Tensor:
    """The sum (or mean) of per-layer terms on the first term's device; a zero on the model's device without any."""
    if not terms:
        param = next(model.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)
    total = torch.stack([term.to(terms[0].device) for term in terms])
    return total.mean() if mean else total.sum()


def orthogonality_penalty(model: nn.Module) -> torch.Tensor:
    """qGOFT's soft orthogonality penalty of the active quasi adapters (Eq. 6), each weighted by its own λ: the two
    columns of each 2×2 block are pushed towards orthogonality, their norms stay free. Strict adapters give 0."""
    terms = []
    for layer, name in _active_adapters(model, GivensLayer):
        weight = layer.givens_penalty_weight.get(name, 0.0)
        if name in layer.givens_blocks and weight != 0.0:
            m = whole(layer.givens_blocks[name])
            terms.append(weight * (m[:, 0, 0] * m[:, 0, 1] + m[:, 1, 0] * m[:, 1, 1]).pow(2).sum())
    return _combined(terms, model)


def sorsa_orthonormality(model: nn.Module) -> torch.Tensor:
    """SORSA's regulariser: the mean over adapted layers of ``‖UᵀU − I‖_F + ‖V Vᵀ − I‖_F`` (Cao 2024)."""
    terms = [
        layer.orthonormality_defect(name)
        for layer, name in _active_adapters(model, SorsaLayer)
        if name in layer.sorsa_U
    ]
    return _combined(terms, model, mean=True)


def hra_orthogonality(model: nn.Module) -> torch.Tensor:
    """HRA's regulariser for peft's HRA adapters: ``Σ_layers ‖I_r − ÛᵀÛ‖_F``, Û the unit-normalised reflection
    vectors (Yuan et al. 2024; Frobenius, not squared, as in the authors' code). Adapters with Gram-Schmidt are
    skipped: their reflections are orthogonalised in the forward pass already."""
    terms = []
    for layer, name in _active_adapters(model, HRALayer):
        if name not in layer.hra_u or layer.hra_apply_GS.get(name, False):
            continue
        vectors = whole(layer.hra_u[name])
        unit = vectors / vectors.norm(dim=0, keepdim=True)
        eye = torch.eye(unit.shape[1], device=unit.device, dtype=unit.dtype)
        terms.append(defect_norm(eye - unit.t() @ unit))
    return _combined(terms, model)


def regularizers_for(adapter_config: PeftConfig, hra_lambda: float = 0.0) -> tuple[Regularizer, ...]:
    """The regularisers a run with this adapter trains with; empty when the method has none or it is turned off.
    `hra_lambda`: HRA's weight, which peft's `HRAConfig` does not hold. Strict GOFT, and HRA with Gram-Schmidt, are
    orthogonal by construction and need none."""
    quasi = isinstance(adapter_config, GivensConfig) and adapter_config.quasi
    if quasi and adapter_config.orthogonality_penalty_weight > 0:
        return (Regularizer("qgoft_penalty", orthogonality_penalty),)
    if isinstance(adapter_config, SorsaConfig) and adapter_config.gamma > 0:
        return (Regularizer("sorsa_orthonormality", sorsa_orthonormality, adapter_config.gamma, after_clipping=True),)
    if isinstance(adapter_config, HRAConfig) and hra_lambda > 0 and not adapter_config.apply_GS:
        return (Regularizer("hra_orthogonality", hra_orthogonality, hra_lambda),)
    return ()
