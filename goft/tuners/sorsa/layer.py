"""SORSA layers for ``nn.Linear``: trainable top singular triplets over a frozen residual."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from peft.utils.integrations import gather_params_ctx
from torch import nn

from goft.tuners.orthogonality import defect_norm
from goft.tuners.sharded import whole


class SorsaLayer(BaseTunerLayer):
    """Per adapter: trainable ``sorsa_U`` (n×r), ``sorsa_S`` (r), ``sorsa_Vh`` (r×d), and their initial values as
    frozen buffers. The base weight itself is never modified, so a saved adapter loads onto the original base:
    ``W x − U₀ S₀ V₀ᵀ x`` is the paper's frozen residual ``W_r x``, computed without rewriting ``W``."""

    adapter_layer_names: tuple[str, ...] = ("sorsa_U", "sorsa_S", "sorsa_Vh")
    other_param_names: tuple[str, ...] = ("sorsa_U0", "sorsa_S0", "sorsa_Vh0", "sorsa_gamma")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.sorsa_U = nn.ParameterDict({})
        self.sorsa_S = nn.ParameterDict({})
        self.sorsa_Vh = nn.ParameterDict({})
        self.sorsa_U0 = BufferDict({}, persistent=True)
        self.sorsa_S0 = BufferDict({}, persistent=True)
        self.sorsa_Vh0 = BufferDict({}, persistent=True)
        self.sorsa_gamma: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"SORSA adapters support torch.nn.Linear layers, got {type(base).__name__}.")
        self.in_features, self.out_features = base.in_features, base.out_features

    def update_layer(self, adapter_name: str, config, inference_mode: bool = False, **kwargs) -> None:
        rank = min(config.r, self.in_features, self.out_features)
        with gather_params_ctx(self.get_base_layer().weight, modifier_rank=None):
            weight = self.get_base_layer().weight.detach().float()  # SVD in fp32 (Cao 2024)
            u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        u, s, vh = u[:, :rank].contiguous(), s[:rank].contiguous(), vh[:rank].contiguous()
        self.sorsa_U[adapter_name] = nn.Parameter(u.clone())
        self.sorsa_S[adapter_name] = nn.Parameter(s.clone())
        self.sorsa_Vh[adapter_name] = nn.Parameter(vh.clone())
        self.sorsa_U0[adapter_name], self.sorsa_S0[adapter_name], self.sorsa_Vh0[adapter_name] = u, s, vh
        self.sorsa_gamma[adapter_name] = float(config.gamma)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    @property
    def _available_adapters(self) -> set[str]:
        return set(self.sorsa_U)

    def low_rank_delta(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """``U S Vᵀ x − U₀ S₀ V₀ᵀ x``: the trained triplets replace the initial ones (zero at init)."""
        u, s, vh = self.sorsa_U[adapter_name], self.sorsa_S[adapter_name], self.sorsa_Vh[adapter_name]
        u0, s0, vh0 = self.sorsa_U0[adapter_name], self.sorsa_S0[adapter_name], self.sorsa_Vh0[adapter_name]
        x = x.to(u.dtype)
        return ((x @ vh.t()) * s) @ u.t() - ((x @ vh0.t()) * s0) @ u0.t()

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        u, s, vh = self.sorsa_U[adapter_name], self.sorsa_S[adapter_name], self.sorsa_Vh[adapter_name]
        u0, s0, vh0 = self.sorsa_U0[adapter_name], self.sorsa_S0[adapter_name], self.sorsa_Vh0[adapter_name]
        return (u * s) @ vh - (u0 * s0) @ vh0

    def orthonormality_defect(self, adapter_name: str) -> torch.Tensor:
        """``‖UᵀU − I‖_F + ‖V Vᵀ − I‖_F`` (Frobenius, not squared; Cao 2024), differentiable."""
        u, vh = whole(self.sorsa_U[adapter_name]), whole(self.sorsa_Vh[adapter_name])
        eye = torch.eye(u.shape[1], device=u.device, dtype=u.dtype)
        return defect_norm(u.t() @ u - eye) + defect_norm(vh @ vh.t() - eye)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        weight = self.get_base_layer().weight
        if adapter_names and not weight.dtype.is_floating_point:
            # adding the float delta to an integer weight would silently round it away
            raise NotImplementedError(
                f"Cannot merge a SORSA adapter into a base weight of dtype {weight.dtype}; merge into a "
                "full-precision copy of the base model instead."
            )
        for name in adapter_names:
            if name not in self._available_adapters:
                continue
            with gather_params_ctx(weight):
                merged = weight.data + self.delta_weight(name).detach().to(weight.dtype)
                if safe_merge and not bool(torch.isfinite(merged).all()):
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken.")
                weight.data = merged
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        weight = self.get_base_layer().weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self._available_adapters:
                with gather_params_ctx(weight):
                    weight.data = weight.data - self.delta_weight(name).detach().to(weight.dtype)


class Linear(nn.Module, SorsaLayer):
    """A SORSA-adapted ``nn.Linear``."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, **kwargs) -> None:
        super().__init__()
        SorsaLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name in self._available_adapters:
                result = result + self.low_rank_delta(x, name).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "sorsa." + super().__repr__()
