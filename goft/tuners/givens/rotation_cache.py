"""A Givens layer's rotations kept while its parameters stand still (evaluation, generation).

An unmerged Givens layer builds its rotation's factors from the angles at every call: in greedy decoding, at every
token of every layer. Where no gradient is wanted, the layer keeps, per adapter, the prepared rotation
(``goft.rotation.prepared``) with what it was built from, and reuses it while all of that is unchanged:

* the parameter tensors themselves (held, so that no other tensor can take their place), their version counters
  (PyTorch bumps them at every in-place change: an optimiser step, ``load_state_dict``, ``copy_``), storages,
  devices and dtypes;
* the inputs' device and dtype, the rotation backend asked for, and the bound on the angles;
* the number of optimizer steps taken in the process (counted by a hook on every ``torch.optim`` optimizer): fused
  optimizers (``AdamW(fused=True)``, transformers' default ``adamw_torch_fused``) write their parameters without
  bumping the version counters, so any step drops every kept rotation.

Besides, the layer drops its whole cache when it merges or unmerges, adds, deletes or switches adapters, moves
(``to``, ``half``), loads a state dict, or goes back to training (``train()``). Parameters whose writes a version
counter may miss are never cached: sharded ones (FSDP, DeepSpeed ZeRO-3) and inference tensors. A write through
``.data`` also bypasses the counter: code that changes adapter weights that way calls ``drop_rotation_caches``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from goft.rotation.prepared import PreparedRotation
from goft.tuners.sharded import DTensor


def _tracked(parameter: torch.Tensor) -> bool:
    """Whether every write to `parameter` shows in its version counter or its storage."""
    return not (
        parameter.is_inference()
        or isinstance(parameter, DTensor)  # FSDP2 shards
        or hasattr(parameter, "ds_id")  # DeepSpeed ZeRO-3 partitions
        or getattr(parameter, "_fsdp_flattened", False)  # FSDP1 views of a flat parameter
        or parameter._base is not None  # a view: written through its base
    )


def _state(parameter: torch.Tensor) -> tuple:
    return parameter._version, parameter.data_ptr(), parameter.dtype, parameter.device


@dataclass(frozen=True)
class _Entry:
    parameters: tuple[torch.Tensor, ...]
    states: tuple[tuple, ...]
    context: tuple
    rotation: PreparedRotation

    steps: int  # optimizer steps taken in the process when it was built

    def still_valid(self, parameters: list[torch.Tensor], context: tuple) -> bool:
        return (
            self.steps == _optimizer_steps
            and context == self.context
            and len(parameters) == len(self.parameters)
            and all(p is q and _state(p) == state for p, q, state in zip(parameters, self.parameters, self.states))
        )


class RotationCache:
    """Per adapter name, one prepared rotation and the state it was built from; counts its builds and reuses."""

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}
        self.builds = 0
        self.reuses = 0

    def rotation(
        self, name: str, parameters: list[torch.Tensor], context: tuple, build: Callable[[], PreparedRotation]
    ) -> PreparedRotation | None:
        """The kept rotation of adapter `name` if nothing it depends on changed, else a new one from `build` (kept);
        None when `parameters` cannot be tracked (the caller rotates without the cache)."""
        entry = self.entries.get(name)
        if entry is not None and entry.still_valid(parameters, context):
            self.reuses += 1
            return entry.rotation
        if not all(_tracked(p) for p in parameters):
            return None
        rotation = build()
        self.entries[name] = _Entry(
            tuple(parameters), tuple(_state(p) for p in parameters), context, rotation, _optimizer_steps
        )
        self.builds += 1
        return rotation

    def clear(self) -> None:
        self.entries.clear()


_keeping = True  # False inside `rotations_rebuilt_each_call`
_optimizer_steps = 0  # every optimizer step of the process: fused optimizers write without bumping version counters


def _count_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_step)


def keeping() -> bool:
    return _keeping


@contextlib.contextmanager
def rotations_rebuilt_each_call():
    """Within the block, every layer builds its rotation at each call, as in training (to measure what keeping them
    saves, or to rule the cache out when debugging)."""
    global _keeping
    previous, _keeping = _keeping, False
    try:
        yield
    finally:
        _keeping = previous


def drop_rotation_caches(model: nn.Module) -> int:
    """Drop the kept rotations of every Givens layer of `model` (after writing adapter weights through ``.data``);
    returns how many layers had some."""
    dropped = 0
    for module in model.modules():
        cache = getattr(module, "_rotation_cache", None)
        if isinstance(cache, RotationCache) and cache.entries:
            cache.clear()
            dropped += 1
    return dropped
