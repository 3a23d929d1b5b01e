"""What an adapter does to the weights: the effective matrix of an adapted layer, the angles between its neurons,
the adapter's size, its orthogonality error and a readable name of its method."""

import copy
import math

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import ModulesToSaveWrapper
from torch import nn

from goft.methods import is_exactly_orthogonal
from goft.tuners.givens.layer import is_linear, layer_features
from goft.tuners.orthogonality import orthogonality_error
from goft.tuners.quantized import quantization_kind, read_weight

GRAM_ELEMENTS = 1 << 22  # entries of one chunk of the row-by-row cosine matrix (32 MiB in float64)
EXACT_PAIRS = 4096  # near-parallel row pairs measured with the difference formula at a time
NEAR_PARALLEL = 0.99  # |cos| above this: acos is ill-conditioned, use the difference formula instead


def _innermost_base(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(parent, base): the module that holds the innermost `base_layer`, and that base layer."""
    parent = layer
    while isinstance(getattr(parent.base_layer, "base_layer", None), nn.Module):
        parent = parent.base_layer
    return parent, parent.base_layer


def _dense_float64(base: nn.Module) -> nn.Linear:
    """A float64 `nn.Linear` holding the dequantized weight (and bias) of a bitsandbytes 4-/8-bit layer."""
    weight = read_weight(base).double()
    dense = nn.Linear(
        weight.shape[1], weight.shape[0], bias=base.bias is not None, dtype=torch.float64, device=weight.device
    )
    dense.weight.data.copy_(weight)
    if base.bias is not None:
        dense.bias.data.copy_(base.bias.detach().double())
    return dense


@torch.no_grad()
def effective_weight(layer: BaseTunerLayer, enabled: bool = True) -> torch.Tensor:
    """The (out, in) weight the tuner `layer` applies, with its adapters on or off; rows are the output neurons.

    Works for any peft method whose adapted layer is affine in its input: a copy of the layer is probed with the
    identity, W' = (layer(I) − layer(0))ᵀ, in float64. A bitsandbytes 4-/8-bit base is dequantized in the copy first
    (the result is exact for the dequantized base); other non-float bases are probed in float32."""
    if not isinstance(layer, BaseTunerLayer):
        raise TypeError(f"Expected a peft tuner layer, got {type(layer).__name__}.")
    base = layer.get_base_layer()
    d, _ = layer_features(base)
    probe = copy.deepcopy(layer)
    if quantization_kind(base) is not None:
        parent, quantized = _innermost_base(probe)
        parent.base_layer = _dense_float64(quantized)
        base = parent.base_layer
    dtype = torch.float64 if base.weight.dtype.is_floating_point else torch.float32
    if dtype == torch.float64:
        probe = probe.double()
    probe.eval()
    probe.enable_adapters(enabled)
    eye = torch.eye(d, dtype=dtype, device=base.weight.device).unsqueeze(0)  # one batch of d one-hot "tokens"
    zero = torch.zeros(1, 1, d, dtype=dtype, device=base.weight.device)
    return (probe(eye)[0] - probe(zero)[0]).t().contiguous().double()


def _pair_angles(units: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    a, b = units[rows], units[cols]
    # angle(a, b) = 2·atan2(‖a − b‖, ‖a + b‖) for unit a, b: accurate at every angle, 0 and π included
    return 2 * torch.atan2((a - b).norm(dim=1), (a + b).norm(dim=1))


@torch.no_grad()
def neuron_angle_change(base_weight: torch.Tensor, tuned_weight: torch.Tensor) -> float:
    """Largest |angle(wᵢ', wⱼ') − angle(wᵢ, wⱼ)| over all pairs of rows (neurons), in degrees, in float64.

    Well-separated pairs use acos of the cosine (error ≈ 1e-15 rad where |cos| ≤ 0.99); near-(anti)parallel pairs,
    where acos is ill-conditioned, are measured again with the difference formula. Chunked to bound memory."""
    if base_weight.shape != tuned_weight.shape or base_weight.dim() != 2:
        raise ValueError(
            f"Expected two weights of one (out, in) shape, got {tuple(base_weight.shape)} and "
            f"{tuple(tuned_weight.shape)}."
        )
    # W' = W R with R Rᵀ = I keeps W' W'ᵀ = W Wᵀ: every row norm and inner product, so every angle, is kept
    base = nn.functional.normalize(base_weight.double(), dim=1)
    tuned = nn.functional.normalize(tuned_weight.to(base.device).double(), dim=1)
    n = base.shape[0]
    chunk = max(1, GRAM_ELEMENTS // n)
    worst = torch.zeros((), dtype=torch.float64, device=base.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        cos_base = base[start:stop] @ base[start:].t()  # pairs (i, j ≥ start): each unordered pair at least once
        cos_tuned = tuned[start:stop] @ tuned[start:].t()
        near = (cos_base.abs() > NEAR_PARALLEL) | (cos_tuned.abs() > NEAR_PARALLEL)
        change = (torch.acos(cos_tuned.clamp(-1, 1)) - torch.acos(cos_base.clamp(-1, 1))).abs()
        worst = torch.maximum(worst, change.masked_fill(near, 0).max())
        rows, cols = near.nonzero(as_tuple=True)
        rows, cols = rows + start, cols + start
        for first in range(0, rows.numel(), EXACT_PAIRS):
            r, c = rows[first : first + EXACT_PAIRS], cols[first : first + EXACT_PAIRS]
            change = (_pair_angles(tuned, r, c) - _pair_angles(base, r, c)).abs()
            worst = torch.maximum(worst, change.max())
    return math.degrees(worst.item())


def adapted_linear_layers(model: nn.Module) -> dict[str, BaseTunerLayer]:
    """The model's peft tuner layers that wrap a linear base (embeddings and other wrappers are left out)."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer) and is_linear(module.get_base_layer())
    }


def neuron_angle_changes(model: nn.Module) -> dict[str, float]:
    """Per adapted layer, the largest change (degrees) of an angle between two of its neurons, base vs adapted."""
    changes = {}
    for name, layer in adapted_linear_layers(model).items():
        base, tuned = effective_weight(layer, enabled=False), effective_weight(layer, enabled=True)
        changes[name] = neuron_angle_change(base, tuned)
    return changes


def max_neuron_angle_change(model: nn.Module) -> float:
    """Largest change (degrees) of the angle between any two neurons of any adapted layer, base vs adapted.

    An exactly orthogonal input-side rotation keeps it at 0: W' = W R gives W' W'ᵀ = W R Rᵀ Wᵀ = W Wᵀ
    (R Rᵀ = I), so every inner product and norm of rows, hence every angle, is unchanged."""
    return max(neuron_angle_changes(model).values(), default=0.0)


def adapter_parameter_count(model: nn.Module, adapter_name: str = "default") -> int:
    """Number of the adapter's own weights (tuner-layer tensors and modules_to_save), frozen buffers excluded."""
    seen, total = set(), 0
    for module in model.modules():
        tensors = []
        if isinstance(module, BaseTunerLayer):
            for attr in module.adapter_layer_names:
                container = getattr(module, attr, None)
                if container is not None and adapter_name in container:
                    item = container[adapter_name]
                    tensors += list(item.parameters()) if isinstance(item, nn.Module) else [item]
        elif isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            tensors += list(module.modules_to_save[adapter_name].parameters())
        for tensor in tensors:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel()
    return total


def strict_orthogonality_error(model, adapter_name: str = "default") -> float | None:
    """max |RᵀR − I| of a strict Givens adapter; None for adapters that are not exactly orthogonal by design."""
    config = model.peft_config[adapter_name]
    if is_exactly_orthogonal(config):
        return orthogonality_error(model, adapter_name)
    return None


def _layer_is_identity(layer: BaseTunerLayer, name: str) -> bool | None:
    """Whether the adapter `name` leaves this layer's outputs exactly as they are (bit for bit), as far as its
    parameters show: strict angles at 0, quasi blocks at I, a GOFT* scale at 1; LoRA with B = 0 (no DoRA). None for
    a method whose parameters do not show it."""
    from peft.tuners.lora import LoraLayer

    from goft.tuners.givens.layer import GivensLayer

    def all_equal(tensor, value) -> bool:
        return bool((tensor.detach() == value).all())

    if isinstance(layer, GivensLayer):
        if name in layer.givens_angles and not all_equal(layer.givens_angles[name], 0):
            return False  # θ = θ_max tanh(0) = 0: cos 1, sin 0, so every pair is left exactly as it is
        if name in layer.givens_blocks and not all_equal(layer.givens_blocks[name], torch.eye(2)):
            return False
        return not (name in layer.givens_scale and not all_equal(layer.givens_scale[name], 1))
    if isinstance(layer, LoraLayer) and name in layer.lora_B:
        if layer.use_dora.get(name) or getattr(layer, "lora_variant", {}).get(name) is not None:
            return None  # DoRA rescales each column by a norm: not bit for bit
        b = layer.lora_B[name]
        return all_equal(b.weight, 0) and (b.bias is None or all_equal(b.bias, 0))  # x A Bᵀ s = 0 exactly
    return None


def adapter_is_identity(model: nn.Module, adapter_name: str = "default") -> bool:
    """True only when the adapter `adapter_name` provably leaves every output of the peft `model` exactly as its
    base computes it (e.g. an untrained Givens or LoRA adapter); False when it changes them or cannot be shown not to.
    """
    found = False
    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and adapter_name in _adapter_names(module):
            found = True
            if _layer_is_identity(module, adapter_name) is not True:
                return False
        elif isinstance(module, ModulesToSaveWrapper):
            return False  # a trained copy of a whole module
    return found


def _adapter_names(layer: BaseTunerLayer) -> set[str]:
    names = set()
    for attribute in layer.adapter_layer_names:
        holder = getattr(layer, attribute, None)
        if isinstance(holder, (nn.ModuleDict, nn.ParameterDict)):
            names |= set(holder.keys())
    return names
