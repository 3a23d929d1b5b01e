"""``SorsaModel``: the peft tuner that injects SORSA layers, and the model-wide orthonormality regulariser."""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from ..config import TARGET_MODULES_BY_MODEL_TYPE, fill_default_target_modules
from .config import SorsaConfig
from .layer import Linear, SorsaLayer


class SorsaModel(BaseTuner):
    """Creates SORSA adapters on a pretrained model; use it through peft after ``import goft``."""

    prefix: str = "sorsa_"
    tuner_layer_cls = SorsaLayer
    target_module_mapping = TARGET_MODULES_BY_MODEL_TYPE

    def _prepare_adapter_config(self, peft_config: SorsaConfig, model_config: dict) -> SorsaConfig:
        return fill_default_target_modules(peft_config, model_config, "SorsaConfig")

    def _create_and_replace(self, config: SorsaConfig, adapter_name: str, target: nn.Module, target_name: str,
                            parent: nn.Module, current_key: str, **kwargs) -> None:
        if isinstance(target, SorsaLayer):
            target.update_layer(adapter_name, config)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear) or type(base).__module__.startswith("bitsandbytes"):
            raise ValueError(f"Layer {current_key!r}: SORSA supports full-precision torch.nn.Linear layers, not "
                             f"{type(base).__name__}; adjust target_modules.")
        new_module = Linear(target, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)


def sorsa_orthonormality(model: nn.Module) -> torch.Tensor:
    """Mean over adapted layers of ``‖UᵀU − I‖_F + ‖V Vᵀ − I‖_F`` for the active SORSA adapters (differentiable)."""
    terms = [layer.orthonormality_defect(name) for layer in model.modules() if isinstance(layer, SorsaLayer)
             if not layer.disable_adapters for name in layer.active_adapters if name in layer._available_adapters]
    if not terms:
        return torch.zeros(())
    return torch.stack([t.to(terms[0].device) for t in terms]).mean()
