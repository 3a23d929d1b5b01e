"""Running goft's Triton kernels on CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``).

The interpreter stores bfloat16 as raw 16-bit integers and its ``tl.dot`` multiplies those integers as they are,
so a bfloat16 product comes out as garbage (Triton 3.9). ``exact_bfloat16_dot`` widens bfloat16 operands to
float32 first, which is what the hardware's bfloat16 products with float32 accumulation compute.
"""

from __future__ import annotations

import torch

from goft.rotation.backend import interpreting  # noqa: F401  (the tests ask it here)


def kernel_device() -> torch.device:
    """Where the kernels run in tests: the GPU when there is one, else CPU tensors under the interpreter."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def exact_bfloat16_dot(monkeypatch) -> None:
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    original = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        widen = lambda t: self.cast_impl(t, tl.float32) if t.dtype.scalar == tl.bfloat16 else t  # noqa: E731
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(builder, "create_dot", create_dot)
