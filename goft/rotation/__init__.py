"""The math floor: the Givens rotation of GOFT and the two implementations that apply it. No peft here.

- `givens`: the stage plan, the rotation's factors, its PyTorch autograd, dense matrices and merging;
- `fused`: the same rotation's autograd on the Triton kernels (`triton_kernels`);
- `backend`: `rotate_rows`, which chooses between the two per call (`GOFT_ROTATION_KERNEL`).

May import: torch (and triton, from `triton_kernels` only). `givens` imports nothing of goft; `fused` imports
`givens` and `triton_kernels`; only `backend` imports `fused`, and nothing here imports `backend`.
"""
