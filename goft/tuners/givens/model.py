"""``GivensModel``: the peft tuner that injects Givens layers into a model."""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from goft.tuners.base import GoftTuner
from goft.tuners.givens.config import GivensConfig
from goft.tuners.givens.layer import GivensLayer, dispatch_default


def _inject_adapter_names(module, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


class GivensModel(GoftTuner):
    """Creates Givens orthogonal fine-tuning adapters (GOFT / qGOFT / GOFT*) on a pretrained model.

    Use it through peft: ``get_peft_model(model, GivensConfig(...))`` after ``import goft``.
    """

    prefix: str = "givens_"
    tuner_layer_cls = GivensLayer

    def _create_and_replace(
        self,
        config: GivensConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs,
    ) -> None:
        if current_key is None:
            raise ValueError("Current key should not be None.")
        try:
            if isinstance(target, GivensLayer):
                target.update_layer(adapter_name, config)
                return
            new_module = self._create_new_module(config, adapter_name, target)
        except ValueError as error:
            raise ValueError(f"Layer {current_key!r}: {error}") from None  # say which layer could not be adapted
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter does not train
        self._replace_module(parent, target_name, new_module, target)

    @staticmethod
    def _create_new_module(config: GivensConfig, adapter_name: str, target: nn.Module) -> nn.Module:
        new_module = dispatch_default(target, adapter_name, config)
        if new_module is None:
            base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
            raise ValueError(
                f"Target module {type(base).__name__} is not supported by Givens adapters; supported are "
                "torch.nn.Linear and transformers' Conv1D. Adjust target_modules."
            )
        return new_module

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """Route ``adapter_names=[...]`` (one adapter per sample, inference only) to every Givens layer."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
        known = set()
        for module in self.modules():
            if isinstance(module, GivensLayer):
                known |= module._available_adapters
        unknown = {name for name in adapter_names if name != "__base__"} - known
        if unknown:
            raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(sorted(unknown))}")
        handles = [
            module.register_forward_pre_hook(
                partial(_inject_adapter_names, adapter_names=adapter_names), with_kwargs=True
            )
            for module in self.modules()
            if isinstance(module, GivensLayer)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
