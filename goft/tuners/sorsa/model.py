"""``SorsaModel``: the peft tuner that injects SORSA layers (its regulariser: `goft.regularizers`)."""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from goft.tuners.base import GoftTuner
from goft.tuners.sorsa.config import SorsaConfig
from goft.tuners.sorsa.layer import Linear, SorsaLayer


class SorsaModel(GoftTuner):
    """Creates SORSA adapters on a pretrained model; use it through peft after ``import goft``."""

    prefix: str = "sorsa_"
    tuner_layer_cls = SorsaLayer

    def _create_and_replace(
        self,
        config: SorsaConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs,
    ) -> None:
        if isinstance(target, SorsaLayer):
            target.update_layer(adapter_name, config)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear) or type(base).__module__.startswith("bitsandbytes"):
            raise ValueError(
                f"Layer {current_key!r}: SORSA supports full-precision torch.nn.Linear layers, not "
                f"{type(base).__name__}; adjust target_modules."
            )
        new_module = Linear(target, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)
