"""Givens adapter layers for ``nn.Linear`` and transformers' ``Conv1D`` (peft tuner layers)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from peft.utils.integrations import gather_params_ctx
from torch import nn
from transformers.pytorch_utils import Conv1D

from goft.rotation.backend import backend_setting, rotate_rows
from goft.rotation.givens import angles_from_raw, compute_dtype, givens_blocks, rotate_weight
from goft.rotation.prepared import PreparedRotation, prepare_rotation
from goft.tuners.givens import rotation_cache
from goft.tuners.givens.config import GivensConfig
from goft.tuners.quantized import keep_standard_layout, quantization_kind, read_weight, write_weight
from goft.tuners.sharded import whole


def is_linear(module: nn.Module) -> bool:
    """A layer an adapter can wrap: nn.Linear (bitsandbytes' 4-/8-bit layers subclass it) or transformers' Conv1D."""
    return isinstance(module, (nn.Linear, Conv1D))


def layer_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a linear layer (`is_linear`); Conv1D stores its weight as (in, out)."""
    if isinstance(module, Conv1D):  # DeepSpeed ZeRO-3 keeps the true shape of a partitioned weight aside
        shape = getattr(module.weight, "ds_shape", module.weight.shape)
        return int(shape[0]), int(shape[1])
    if isinstance(module, nn.Linear):
        return int(module.in_features), int(module.out_features)
    raise TypeError(
        f"{type(module).__name__} is not a linear layer: goft's adapters wrap torch.nn.Linear (and "
        "bitsandbytes' 4-/8-bit layers) and transformers' Conv1D."
    )


class GivensLayer(BaseTunerLayer):
    """Holds the adapters of one layer. Per adapter, exactly one of:

    * ``givens_angles[name]``: ``d − 1`` raw angles ``a`` with ``θ = π tanh(a)`` (strict, exactly orthogonal);
    * ``givens_blocks[name]``: ``(d − 1, 2, 2)`` free blocks (quasi, qGOFT);

    and optionally ``givens_scale[name]``: the GOFT* per-input scale ``s`` (``d``).
    """

    adapter_layer_names: tuple[str, ...] = ("givens_angles", "givens_blocks", "givens_scale")
    other_param_names: tuple[str, ...] = ("givens_penalty_weight", "givens_max_angle")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.givens_angles = nn.ParameterDict({})
        self.givens_blocks = nn.ParameterDict({})
        self.givens_scale = nn.ParameterDict({})
        self.givens_penalty_weight: dict[str, float] = {}
        self.givens_max_angle: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self._rotation_cache = rotation_cache.RotationCache()  # kept while the parameters stand still
        base = self.get_base_layer()
        keep_standard_layout(base)
        self.in_features, self.out_features = layer_features(base)  # as peft's own layers expose them
        self.fan_in_fan_out = isinstance(base, Conv1D)

    @property
    def _available_adapters(self) -> set[str]:
        return {*self.givens_angles, *self.givens_blocks}

    def update_layer(self, adapter_name: str, config: GivensConfig, inference_mode: bool = False, **kwargs) -> None:
        """Add the adapter `adapter_name` to this layer as `config` describes it (angles at zero: the identity)."""
        self._rotation_cache.clear()
        d = self.in_features
        if d < 2:
            raise ValueError(f"A Givens adapter needs a layer with at least 2 input features, this one has {d}.")
        if config.quasi:
            self.givens_blocks[adapter_name] = nn.Parameter(torch.empty(d - 1, 2, 2))
        else:
            self.givens_angles[adapter_name] = nn.Parameter(torch.empty(d - 1))
        if config.scaling:
            self.givens_scale[adapter_name] = nn.Parameter(torch.empty(d))
        self.givens_penalty_weight[adapter_name] = float(config.orthogonality_penalty_weight) if config.quasi else 0.0
        self.givens_max_angle[adapter_name] = float(config.max_angle)
        self.reset_givens_parameters(adapter_name, config.init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    @torch.no_grad()
    def reset_givens_parameters(self, adapter_name: str, init_weights: bool) -> None:
        """Identity at init (``a = 0``, ``M = I``, ``s = 1``), or a random non-identity adapter."""
        if adapter_name in self.givens_angles:
            angles = self.givens_angles[adapter_name]
            if init_weights:
                angles.zero_()
            else:
                angles.normal_(std=0.2)
        if adapter_name in self.givens_blocks:
            blocks = self.givens_blocks[adapter_name]
            if init_weights:
                blocks.copy_(torch.eye(2).expand_as(blocks))
            else:
                theta = angles_from_raw(0.2 * torch.randn(blocks.shape[0]))
                blocks.copy_(givens_blocks(theta) + 0.05 * torch.randn(blocks.shape))
        if adapter_name in self.givens_scale:
            scale = self.givens_scale[adapter_name]
            if init_weights:
                scale.fill_(1.0)
            else:
                scale.normal_(mean=1.0, std=0.1)

    def is_orthogonal(self, adapter_name: str) -> bool:
        """Whether the adapter is exactly orthogonal: strict angles, no GOFT* scale."""
        return adapter_name in self.givens_angles and adapter_name not in self.givens_scale

    def rotation_blocks(self, adapter_name: str) -> tuple[torch.Tensor, bool]:
        """The adapter's 2×2 blocks and whether they are exact rotations."""
        # Built in at least fp32 even when trainers store adapter weights in bf16 (as TRL does for quantized
        # bases): any angle gives an exact rotation, but cos/sin rounded to bf16 would not be orthogonal.
        if adapter_name in self.givens_angles:
            raw = whole(self.givens_angles[adapter_name])
            max_angle = self.givens_max_angle.get(adapter_name, math.pi)
            return givens_blocks(angles_from_raw(raw.to(compute_dtype(raw.dtype)), max_angle)), True
        blocks = whole(self.givens_blocks[adapter_name])
        return blocks.to(compute_dtype(blocks.dtype)), False

    def rotate_inputs(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """``diag(s) Rᵀ x`` for column inputs, i.e. ``(x R) ⊙ s`` for the rows of ``x`` (GOFT Eq. 3, §5.5); with the
        kept rotation where no gradient is wanted (see `rotation_cache`), equal to float rounding either way."""
        return self._rotate(x, adapter_name, self.adapter_parameters(adapter_name))

    def _rotate(self, x: torch.Tensor, adapter_name: str, parameters: list[nn.Parameter]) -> torch.Tensor:
        prepared = self._kept_rotation(x, adapter_name, parameters)
        if prepared is not None:
            return prepared(x)
        blocks, _ = self.rotation_blocks(adapter_name)
        return rotate_rows(x, blocks, self.givens_scale.get(adapter_name))

    def _kept_rotation(self, x: torch.Tensor, adapter_name: str, parameters) -> PreparedRotation | None:
        """The adapter's prepared rotation when neither training nor a gradient needs it rebuilt, else None."""
        if not rotation_cache.keeping() or (
            torch.is_grad_enabled() and (self.training or x.requires_grad or any(p.requires_grad for p in parameters))
        ):
            return None
        context = (x.device, x.dtype, backend_setting(), self.givens_max_angle.get(adapter_name))

        def build() -> PreparedRotation:
            with torch.inference_mode(False), torch.no_grad():
                blocks, _ = self.rotation_blocks(adapter_name)
                return prepare_rotation(x, blocks, self.givens_scale.get(adapter_name))

        return self._rotation_cache.rotation(adapter_name, parameters, context, build)

    def set_adapter(self, adapter_names, inference_mode: bool = False) -> None:
        """Make `adapter_names` the active adapters (peft's), dropping the kept rotations."""
        self._rotation_cache.clear()
        super().set_adapter(adapter_names, inference_mode=inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove the adapter `adapter_name` from this layer (peft's), dropping the kept rotations."""
        self._rotation_cache.clear()
        super().delete_adapter(adapter_name)

    # ---- merging ----------------------------------------------------------------------------------------------

    def _weight_as_nd(self) -> torch.Tensor:
        """The base weight as (n, d); bitsandbytes 4-/8-bit weights come back dequantized (float32)."""
        weight = read_weight(self.get_base_layer())
        return weight.t() if self.fan_in_fan_out else weight

    def _write_weight_nd(self, weight_nd: torch.Tensor) -> None:
        base = self.get_base_layer()
        if quantization_kind(base) is not None:
            warnings.warn(
                "Merging into a quantized base re-quantizes its weight: the merged layer is exact only up "
                "to that quantization error.",
                stacklevel=3,
            )
        write_weight(base, weight_nd.t() if self.fan_in_fan_out else weight_nd)

    @torch.no_grad()
    def merged_weight(self, weight_nd: torch.Tensor, adapter_name: str, inverse: bool = False) -> torch.Tensor:
        """``W diag(s) Rᵀ`` (merge) or its exact inverse ``W (Rᵀ)⁻¹ diag(s)⁻¹`` (unmerge), for ``W`` of shape (n, d)."""
        work = compute_dtype(weight_nd.dtype)
        blocks, orthogonal = self.rotation_blocks(adapter_name)
        blocks = blocks.to(device=weight_nd.device, dtype=work)
        scale = self.givens_scale.get(adapter_name)
        scale = whole(scale).to(weight_nd.device, work) if scale is not None else None
        weight = weight_nd.to(work)
        if not inverse:
            return rotate_weight(weight * scale if scale is not None else weight, blocks, orthogonal)
        weight = rotate_weight(weight, blocks, orthogonal, inverse=True)
        if scale is not None:
            if bool((scale == 0).any()):
                raise ValueError(f"Cannot unmerge adapter '{adapter_name}': its GOFT* scale has zero entries.")
            weight = weight / scale
        return weight

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Merge active adapters into the base weight: ``W ← W diag(s) Rᵀ`` (``W_c ← R diag(s) W_c`` for Conv1D)."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        self._rotation_cache.clear()
        for name in adapter_names:
            if name not in self._available_adapters:
                continue
            with self._gathered(name):
                new = self.merged_weight(self._weight_as_nd(), name)
                if safe_merge and not bool(torch.isfinite(new).all()):
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken.")
                self._write_weight_nd(new)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Undo merges in reverse order; strict adapters use the exact transpose ``W ← W R``."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        self._rotation_cache.clear()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self._available_adapters:
                with self._gathered(name):
                    self._write_weight_nd(self.merged_weight(self._weight_as_nd(), name, inverse=True))

    def adapter_parameters(self, adapter_name: str) -> list[nn.Parameter]:
        """The trainable tensors of the adapter `adapter_name` on this layer."""
        # read from the ParameterDicts' own tables: this runs at every call of an unmerged layer
        found = (self._modules[holder]._parameters.get(adapter_name) for holder in self.adapter_layer_names)
        return [parameter for parameter in found if parameter is not None]

    def _gathered(self, adapter_name: str):
        """Under DeepSpeed ZeRO-3, the full base weight and adapter tensors (rank 0 writes the merged weight back)."""
        return gather_params_ctx([self.get_base_layer().weight, *self.adapter_parameters(adapter_name)])


class Linear(nn.Module, GivensLayer):
    """A Givens-adapted ``nn.Linear`` or ``Conv1D``: the adapter rotates the layer's input."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: GivensConfig, **kwargs) -> None:
        super().__init__()
        GivensLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter_names = kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
        elif adapter_names is not None:
            x = self._mixed_batch_inputs(x, adapter_names)
        elif not self.merged:
            # merging a, then b gives W Raᵀ Rbᵀ, so the last active adapter touches the input first
            for name in reversed(self.active_adapters):
                parameters = self.adapter_parameters(name)
                if parameters:  # this layer has the adapter
                    x = self._rotate(x, name, parameters)
        return self.base_layer(x, *args, **kwargs)

    def _mixed_batch_inputs(self, x: torch.Tensor, adapter_names: list[str]) -> torch.Tensor:
        """Per-sample adapters for inference (``adapter_names``; ``"__base__"`` means no adapter)."""
        if len(adapter_names) != len(x):
            raise ValueError(f"Length of `adapter_names` ({len(adapter_names)}) must equal the batch size ({len(x)}).")
        if self.merged:
            raise ValueError("Cannot pass `adapter_names` while adapters are merged; call `unmerge_adapter` first.")
        out = x.clone()
        for name in set(adapter_names):
            if name == "__base__" or name not in self._available_adapters:
                continue
            rows = [i for i, n in enumerate(adapter_names) if n == name]
            out[rows] = self.rotate_inputs(x[rows], name)
        return out

    # the kept rotations are dropped whenever the layer moves, loads weights or trains again (see rotation_cache)
    def _apply(self, fn, recurse: bool = True):
        self._rotation_cache.clear()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._rotation_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def train(self, mode: bool = True):
        if mode:
            self._rotation_cache.clear()
        return super().train(mode)

    def __repr__(self) -> str:
        return "givens." + super().__repr__()


def dispatch_default(target: nn.Module, adapter_name: str, config: GivensConfig, **kwargs) -> Optional[nn.Module]:
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if isinstance(base, (nn.Linear, Conv1D)):
        return Linear(target, adapter_name, config=config, **kwargs)
    return None
