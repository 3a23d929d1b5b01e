"""Adapter tensors read outside the forward pass under FSDP2, which keeps parameters as sharded DTensors between
forwards: the diagnostics, penalties and merges need the whole tensor, with gradients flowing back to the shards."""

from __future__ import annotations

import torch

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # torch built without distributed support
    DTensor, distribute_tensor = (), None


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself, or the full tensor of a sharded DTensor (differentiable: the gradient of the full tensor
    reaches each rank's shard)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def store_whole(param: torch.Tensor, value: torch.Tensor) -> None:
    """Store ``value``, a whole tensor, as ``param``'s data; a sharded DTensor keeps its sharding (every rank passes
    the same ``value``, e.g. a merged weight)."""
    if isinstance(param, DTensor):
        param.data.copy_(distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements))
    else:
        param.data = value.to(param.dtype).contiguous()
