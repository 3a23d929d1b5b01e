"""Which implementation rotates the activations: the fused Triton kernels (``fused``) or PyTorch (``givens``).

``rotate_rows`` is the entry point the adapter layers call; this module imports both implementations (the kernels
only when they run), and neither of them imports it.

``GOFT_ROTATION_KERNEL`` picks:

* ``auto`` (default): the kernels for float32/bfloat16/float16 CUDA tensors when Triton is importable and the kernels
  passed their self-check on that device and dtype; the PyTorch path otherwise (CPUs, float64, no Triton);
* ``triton``: the kernels, or a clear error saying why they cannot run (CPU tensors need ``TRITON_INTERPRET=1``);
* ``torch``: always the PyTorch path.

``use_backend(choice)`` does the same for a block of code.

The self-check runs once per (device, dtype), on first use: a small rotation with leaders, a tail, free blocks and a
GOFT* scale, forward and backward, against the PyTorch path. If the kernels fail to compile or disagree, ``auto``
warns once and keeps the PyTorch path on that device; ``triton`` raises.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import warnings
from collections.abc import Callable
from typing import Optional

import torch

from goft.rotation.givens import KERNEL_DTYPES, rotate_rows_torch

KERNEL_ENV = "GOFT_ROTATION_KERNEL"
CHOICES = ("auto", "triton", "torch")
AUTO_DEVICE_TYPES = frozenset({"cuda"})  # where ``auto`` sends float32/bfloat16/float16 activations to the kernels
SELF_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}  # relative to the largest

_self_checks: dict[tuple[str, torch.dtype], Optional[str]] = {}  # (device, dtype) → why the kernels failed, or None
_warned: set = set()


_override: Optional[str] = None  # set by ``use_backend``; wins over the environment


def requested_backend() -> str:
    if _override is not None:
        return _override
    raw = os.environ.get(KERNEL_ENV, "")
    choice = raw.strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{KERNEL_ENV}={raw!r} is not one of {', '.join(CHOICES)}.")
    return choice


def backend_setting() -> tuple:
    """What the backend choice depends on, read cheaply (no parsing): for caches of work done on one backend."""
    return _override, os.environ.get(KERNEL_ENV)


@contextlib.contextmanager
def use_backend(choice: str):
    """Within the block, rotations run as ``GOFT_ROTATION_KERNEL=choice`` says, whatever the environment says (the
    autograd graph keeps the choice: a backward outside the block runs the path its forward took)."""
    global _override
    if choice not in CHOICES:
        raise ValueError(f"The rotation backend must be one of {', '.join(CHOICES)}, not {choice!r}.")
    previous, _override = _override, choice
    try:
        yield
    finally:
        _override = previous


@functools.cache
def triton_installed() -> bool:
    """Whether ``import triton`` can work (asked once: searching the path on every rotation would cost time)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton runs its kernels through its CPU interpreter (``TRITON_INTERPRET``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _warn_once(key, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _refuse_forced(x2d: torch.Tensor) -> Optional[str]:
    """Why ``GOFT_ROTATION_KERNEL=triton`` cannot run these activations, or None."""
    if x2d.dtype not in KERNEL_DTYPES:
        return f"the kernels run float32, bfloat16 and float16 activations; these are {x2d.dtype}"
    if x2d.device.type != "cuda" and not interpreting():
        return (
            f"the kernels need CUDA tensors (or TRITON_INTERPRET=1 for Triton's CPU interpreter); these activations "
            f"are on {x2d.device}"
        )
    if not triton_installed():
        return "Triton is not installed (pip install triton)"
    return None


def check_requested_backend(cuda_available: bool) -> None:
    """Refuse, before any work, a bad ``GOFT_ROTATION_KERNEL`` or forced kernels this machine cannot run (the
    recipes' dtypes, float32/bfloat16/float16, are all the kernels' own)."""
    if requested_backend() != "triton":
        return
    if not cuda_available and not interpreting():
        raise ValueError(
            f"{KERNEL_ENV}=triton, but the kernels need a CUDA device and this machine has none (TRITON_INTERPRET=1 "
            f"runs them on CPU tensors, slowly). Set {KERNEL_ENV}=auto or torch."
        )
    if not triton_installed():
        raise ValueError(f"{KERNEL_ENV}=triton, but Triton is not installed (pip install triton).")


def fused_rotation_for(x2d: torch.Tensor) -> Optional[Callable]:
    """``fused_rotate_rows`` if the kernels should rotate ``x2d`` (``(T, d)``), else None (the PyTorch path)."""
    choice = requested_backend()
    if choice == "torch":
        return None
    if choice == "triton":
        refusal = _refuse_forced(x2d)
        if refusal:
            raise RuntimeError(f"{KERNEL_ENV}=triton, but {refusal}. Set {KERNEL_ENV}=auto or torch.")
    elif x2d.device.type not in AUTO_DEVICE_TYPES or x2d.dtype not in KERNEL_DTYPES:
        return None
    elif not triton_installed():
        _warn_once("no triton", "Triton is not installed: GOFT rotates with its PyTorch path (pip install triton).")
        return None
    failure = self_check(x2d.device, x2d.dtype)
    if failure is None:
        from goft.rotation.fused import fused_rotate_rows

        return fused_rotate_rows
    message = f"GOFT's Triton rotation kernel failed its self-check on {x2d.device} ({x2d.dtype}): {failure}"
    if choice == "triton":
        raise RuntimeError(f"{message}. Set {KERNEL_ENV}=torch to use the PyTorch path.")
    _warn_once((str(x2d.device), x2d.dtype), f"{message}. Using the PyTorch path there.")
    return None


def self_check(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Why the kernels cannot be trusted on ``device`` for ``dtype``, or None; runs once per pair."""
    key = (str(device), dtype)
    if key not in _self_checks:
        _self_checks[key] = _run_self_check(torch.device(device), dtype)
    return _self_checks[key]


def _run_self_check(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    generator = torch.Generator().manual_seed(0)
    d, tokens = 150, 70  # two full blocks of 64 and a tail of 22: leaders, a tail and two tiles of tokens

    def inputs():
        make = lambda *shape, scale=1.0: torch.randn(*shape, generator=generator) * scale  # noqa: E731
        x, upstream = make(tokens, d).to(device, dtype), make(tokens, d).to(device, dtype)
        angles = make(d - 1)
        blocks = torch.stack((angles.cos(), -angles.sin(), angles.sin(), angles.cos()), -1).view(d - 1, 2, 2)
        blocks = (blocks + make(d - 1, 2, 2, scale=0.1)).to(device)
        scale = (1 + make(d, scale=0.1)).to(device)
        return x, blocks, scale, upstream

    def run(rotate, x, blocks, scale, upstream):
        x, blocks, scale = (t.detach().clone().requires_grad_() for t in (x, blocks, scale))
        out = rotate(x, blocks, scale)
        (out.float() * upstream.float()).sum().backward()
        return [out.detach(), x.grad, blocks.grad, scale.grad]

    try:
        from goft.rotation.fused import fused_rotate_rows

        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            case = inputs()
            fused = run(fused_rotate_rows, *case)
            reference = run(rotate_rows_torch, *case)
    except Exception as error:  # a kernel that cannot compile or launch here: report it, never crash training
        return f"{type(error).__name__}: {error}".strip()
    names = ("output", "input gradient", "block gradient", "scale gradient")
    tolerance = SELF_CHECK_TOLERANCE[dtype]
    for name, got, want in zip(names, fused, reference):
        want = want.float()
        error = float((got.float() - want).abs().max() / want.abs().max().clamp_min(1e-30))
        if not error <= tolerance:  # also catches NaN
            return f"its {name} differs from the PyTorch path's by {error:.1e} (relative; tolerance {tolerance:.0e})"
    return None


def check_rotation_shapes(d: int, blocks: torch.Tensor, scale: torch.Tensor | None) -> None:
    """Refuse 2×2 blocks or a GOFT* scale that do not belong to width ``d``."""
    if blocks.shape != (d - 1, 2, 2):
        raise ValueError(f"Expected blocks of shape ({d - 1}, 2, 2) for width {d}, got {tuple(blocks.shape)}.")
    if scale is not None and scale.shape != (d,):
        raise ValueError(f"Expected a scale of shape ({d},) for width {d}, got {tuple(scale.shape)}.")


def rotate_rows(x: torch.Tensor, blocks: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``x R`` (``(x R) ⊙ scale`` for GOFT*) over the last dimension of ``x`` (any leading shape); differentiable in
    ``x``, ``blocks`` and ``scale``."""
    d = x.shape[-1]
    check_rotation_shapes(d, blocks, scale)
    x2d = x.reshape(-1, d)
    fused = fused_rotation_for(x2d)  # the Triton kernels on CUDA tensors, else PyTorch
    out = (fused or rotate_rows_torch)(x2d, blocks, scale)
    return out.reshape(x.shape)
