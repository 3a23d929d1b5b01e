"""Reading and writing the weight of a base layer that bitsandbytes may have quantized (4-bit or 8-bit).

Merging an adapter into a quantized layer dequantizes the weight, rotates it in full precision and quantizes the
result again with the layer's own settings; the merged layer is exact up to that one re-quantization.
"""

import torch
from peft.utils.integrations import dequantize_bnb_weight, get_bnb_param_type
from torch import nn

from goft.tuners.sharded import store_whole, whole


def quantization_kind(layer: nn.Module) -> str | None:
    """'4bit', '8bit' or None for a plain floating-point weight."""
    return get_bnb_param_type(layer.weight) or None


def keep_standard_layout(layer: nn.Module) -> None:
    """Stop bitsandbytes from repacking a 4-bit weight for its CPU inference kernel.

    The repacking happens on the first no-grad forward on CPUs with bf16 support, and its inverse (which merging
    and saving need) is not exact in bitsandbytes 0.50: weights read back differ by several quantization steps.
    Givens layers keep the standard layout so that merges see exactly the weights the layer computed with.
    """
    if quantization_kind(layer) == "4bit" and getattr(layer, "support_avx512bf16_for_cpu", False):
        layer.support_avx512bf16_for_cpu = False
        if getattr(layer.weight.quant_state, "packing_format_for_cpu", False):
            _unpack_cpu_layout(layer.weight)


def _unpack_cpu_layout(weight) -> None:
    """On CPUs with bf16 support, bitsandbytes repacks 4-bit weights for its inference kernel on the first no-grad
    forward; dequantization needs the standard layout back (bitsandbytes does the same before saving)."""
    if getattr(weight.quant_state, "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)


def read_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a dense (out, in) tensor; quantized weights come back dequantized in float32."""
    weight = layer.weight
    kind = quantization_kind(layer)
    if kind == "4bit":
        _unpack_cpu_layout(weight)
    if kind is not None:
        return dequantize_bnb_weight(weight, state=getattr(layer, "state", None)).float()
    if not weight.dtype.is_floating_point:
        raise NotImplementedError(
            f"Cannot merge into a {type(weight).__name__} base weight of dtype {weight.dtype}; merge into a "
            "full-precision or bitsandbytes 4-/8-bit copy of the base model instead."
        )
    return whole(weight.data)


def write_weight(layer: nn.Module, new_weight: torch.Tensor) -> None:
    """Store a dense (out, in) weight, quantizing it again the way the layer's weight was quantized."""
    import bitsandbytes as bnb

    old = layer.weight
    kind = quantization_kind(layer)
    if kind == "4bit":
        dtype = old.quant_state.dtype if old.quant_state is not None else torch.float32
        layer.weight = bnb.nn.Params4bit(
            new_weight.to("cpu", dtype),
            requires_grad=False,
            blocksize=old.blocksize,
            compress_statistics=old.compress_statistics,
            quant_type=old.quant_type,
            quant_storage=old.quant_storage,
            module=old.module,
        ).to(old.device)
    elif kind == "8bit":
        layer.weight = bnb.nn.Int8Params(
            new_weight.to("cpu", torch.float16), requires_grad=False, has_fp16_weights=old.has_fp16_weights
        ).to(old.device)
        layer.state.reset_grads()  # the layer caches the old int8 matrix and scales; the next forward reloads them
    else:
        store_whole(old, new_weight)
