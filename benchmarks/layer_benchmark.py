"""One adapted Linear, forward + backward, every method side by side: time, bytes saved for backward, parameters.

    python -m benchmarks.layer_benchmark                 # CPU: fp32, d = 1024 and 4096, sweep 256 … 8192
    python -m benchmarks.layer_benchmark --device cuda   # GPU: bf16, d = 1024, 4096 and 8192

On a GPU, "GOFT strict" runs the fused Triton kernels (goft.rotation.backend) and "GOFT strict, PyTorch path" the
same layer forced onto the PyTorch path; "GOFT strict, kernel B=…" (GPU only, not in the defaults) call the kernels
with a fixed diagonal block width, to choose it. There the peak CUDA memory of one step is reported too.

The base weight is frozen and the input requires grad, as inside a network. Every repetition times each method
once, in turn, so that the machine's drifts hit all methods alike; the table reports medians and ratios to LoRA
r = 16 from that one run. Saved bytes are the distinct storages autograd keeps for backward (saved-tensor hooks),
the frozen weight excluded.

Why this module is long: every method's layer is built, timed and measured the same way here, in one run, so
that the ratios compare like with like; a method added to the benchmark is one entry among its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from peft import BOFTConfig, HRAConfig, LoraConfig, OFTConfig, RoadConfig, get_peft_model
from torch import nn
from transformers import HfArgumentParser

from benchmarks.measure import checked_device_and_dtype, interleaved_medians, machine, saved_bytes
from goft import GivensConfig
from goft.io.formats import markdown_table, write_json
from goft.rotation.backend import interpreting, use_backend
from goft.rotation.givens import BLOCK_CHOICES, angles_from_raw, givens_blocks, rotate_rows_reference

FROZEN = "frozen Linear"
STRICT = "GOFT strict"
STRICT_TORCH = "GOFT strict, PyTorch path"
LORA = "LoRA r=16"
TARGETS = {(4096, 2048): 1.10, (1024, 4096): 1.25}  # strict GOFT time / LoRA time, fp32 on CPU
CUDA_TARGETS = {(4096, 8192): 1.05}  # strict GOFT (kernels) time / LoRA time, bf16 on a GPU


class OneLinear(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.proj = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
        self.proj.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, x):
        return self.proj(x)


class PlainAutogradGivens(nn.Module):
    """Strict GOFT applied stage by stage with plain autograd (no custom Function): the naive reference."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.base = OneLinear(weight)
        self.angles = nn.Parameter(torch.zeros(weight.shape[1] - 1, device=weight.device))

    def forward(self, x):
        blocks = givens_blocks(angles_from_raw(self.angles.float()))  # GOFT Eq. 1
        return self.base(rotate_rows_reference(x.float(), blocks).to(x.dtype))


class FixedBlockKernelGivens(nn.Module):
    """Strict GOFT on the fused kernels with a fixed diagonal block width (the layer's own computation otherwise)."""

    def __init__(self, weight: torch.Tensor, block: int):
        super().__init__()
        self.base, self.block = OneLinear(weight), block
        self.angles = nn.Parameter(torch.zeros(weight.shape[1] - 1, device=weight.device))

    def forward(self, x):
        from goft.rotation.fused import fused_rotate_rows  # needs Triton

        blocks = givens_blocks(angles_from_raw(self.angles.float()))  # GOFT Eq. 1
        return self.base(fused_rotate_rows(x.reshape(-1, x.shape[-1]), blocks, None, self.block).view_as(x))


class OnBackend(nn.Module):
    """A model whose rotations run on one backend (``goft.rotation.backend``) whatever the environment says."""

    def __init__(self, model: nn.Module, backend: str):
        super().__init__()
        self.model, self.backend = model, backend

    def forward(self, x):
        with use_backend(self.backend):
            return self.model(x)


def peft_method(config_factory, backend: str | None = None):
    def build(weight):
        model = get_peft_model(OneLinear(weight), config_factory())
        return model if backend is None else OnBackend(model, backend)

    return build


def strict_goft():
    return GivensConfig(target_modules=["proj"])


METHODS = {
    FROZEN: OneLinear,
    STRICT: peft_method(strict_goft),
    STRICT_TORCH: peft_method(strict_goft, backend="torch"),
    "GOFT quasi": peft_method(lambda: GivensConfig(target_modules=["proj"], strict=False, quasi=True)),
    "GOFT plain autograd": PlainAutogradGivens,
    LORA: peft_method(lambda: LoraConfig(target_modules=["proj"], r=16, lora_alpha=32)),
    "OFT": peft_method(lambda: OFTConfig(target_modules=["proj"])),
    "BOFT": peft_method(lambda: BOFTConfig(target_modules=["proj"])),
    "HRA": peft_method(lambda: HRAConfig(target_modules=["proj"])),
    "RoAd": peft_method(lambda: RoadConfig(target_modules=["proj"])),
}
KERNEL_BLOCK_METHODS = {f"GOFT strict, kernel B={block}": block for block in BLOCK_CHOICES}
METHODS.update({name: partial(FixedBlockKernelGivens, block=block) for name, block in KERNEL_BLOCK_METHODS.items()})
SWEEP_METHODS = (FROZEN, STRICT, LORA)


@dataclass
class LayerBenchmarkArguments:
    device: str = field(default="cpu", metadata={"help": "cpu or cuda."})
    dtype: str | None = field(default=None, metadata={"help": "Default: float32 on CPU, bfloat16 on CUDA."})
    sizes: list[str] | None = field(
        default=None,
        metadata={
            "help": "Layers as DxT (width x tokens). Default: 1024x4096 4096x2048 on CPU; 1024x8192 4096x8192 "
            "8192x8192 on CUDA."
        },
    )
    methods: list[str] | None = field(default=None, metadata={"help": f"Subset of: {', '.join(METHODS)}."})
    sweep_widths: list[int] = field(
        default_factory=lambda: [256, 512, 1024, 2048, 4096, 8192],
        metadata={"help": "Widths for the overhead-over-frozen-Linear sweep ([] skips)."},
    )
    sweep_tokens: int = field(default=1024, metadata={"help": "Tokens per call in the sweep."})
    repeats: int = field(default=7, metadata={"help": "Timed rounds (the median is reported)."})
    sweep_repeats: int = field(default=5, metadata={"help": "Timed rounds in the sweep."})
    warmup: int = field(default=2, metadata={"help": "Untimed rounds first."})
    seed: int = field(default=0)
    output: str = field(default="runs/benchmarks/layer.json", metadata={"help": "Where the JSON results go."})

    def __post_init__(self):
        self.dtype = checked_device_and_dtype(self.device, self.dtype)
        default_sizes = ["1024x8192", "4096x8192", "8192x8192"] if self.device == "cuda" else ["1024x4096", "4096x2048"]
        self.sizes = self.sizes or default_sizes
        self.parsed_sizes = [parse_size(size) for size in self.sizes]
        unknown = [m for m in (self.methods or []) if m not in METHODS]
        if unknown:
            raise ValueError(f"Unknown methods {unknown}; choose from: {', '.join(METHODS)}.")
        kernels_only = [m for m in (self.methods or []) if m in KERNEL_BLOCK_METHODS]
        if kernels_only and self.device != "cuda" and not interpreting():
            raise ValueError(
                f"{kernels_only} call the Triton kernels directly: they need --device cuda (or TRITON_INTERPRET=1)."
            )
        self.methods = self.methods or default_methods(self.device)
        for needed in (FROZEN, LORA):
            if needed not in self.methods:
                self.methods.insert(0, needed)  # ratios and overheads are measured against these
        if any(width < 2 for width in self.sweep_widths):
            raise ValueError("Sweep widths must be at least 2.")
        if min(self.repeats, self.sweep_repeats) < 1 or self.warmup < 0 or self.sweep_tokens < 1:
            raise ValueError("repeats must be >= 1, warmup >= 0 and sweep_tokens >= 1.")


def default_methods(device: str) -> list[str]:
    """Every method but the fixed-block kernels; on a CPU also not the forced PyTorch path (the default there)."""
    skip = set(KERNEL_BLOCK_METHODS) | ({STRICT_TORCH} if device != "cuda" else set())
    return [name for name in METHODS if name not in skip]


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, tokens = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"A size is DxT, e.g. 4096x2048 (width x tokens); got {text!r}.") from None
    if width < 2 or tokens < 1:
        raise ValueError(f"A size needs a width >= 2 and at least one token; got {text!r}.")
    return width, tokens


def training_step(model: nn.Module, x: torch.Tensor, upstream: torch.Tensor):
    """Forward + backward of one adapted layer, gradients cleared first (as an optimizer step would)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        for p in params:
            p.grad = None
        x.grad = None
        model(x).backward(upstream)

    return step


def peak_step_bytes(step, device: torch.device) -> int | None:
    """On a GPU, the CUDA memory one step allocates at its peak above what was allocated before it; None on a CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def measure_size(
    width: int,
    tokens: int,
    methods: list[str],
    repeats: int,
    warmup: int,
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
) -> list[dict]:
    torch.manual_seed(seed)
    weight = torch.randn(width, width, device=device, dtype=dtype) / width**0.5
    models = {name: METHODS[name](weight).to(device=device, dtype=dtype) for name in methods}
    x = torch.randn(tokens, width, device=device, dtype=dtype, requires_grad=True)
    upstream = torch.randn(tokens, width, device=device, dtype=dtype)
    timings = interleaved_medians(
        {name: training_step(m, x, upstream) for name, m in models.items()}, repeats, warmup, device
    )
    rows = []
    for name, model in models.items():
        saved = saved_bytes(lambda model=model: model(x), exclude=[weight])
        rows.append(
            {
                "method": name,
                "width": width,
                "tokens": tokens,
                **timings[name],
                "saved_bytes": saved,
                "peak_step_bytes": peak_step_bytes(training_step(model, x, upstream), device),
                "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            }
        )
    lora, frozen = timings[LORA]["median_ms"], timings[FROZEN]["median_ms"]
    lora_saved = next(r["saved_bytes"] for r in rows if r["method"] == LORA)
    lora_peak = next(r["peak_step_bytes"] for r in rows if r["method"] == LORA)
    for row in rows:
        row["time_vs_lora"] = row["median_ms"] / lora
        row["overhead_ms"] = row["median_ms"] - frozen
        row["saved_vs_lora"] = row["saved_bytes"] / lora_saved if lora_saved else None
        row["peak_vs_lora"] = row["peak_step_bytes"] / lora_peak if lora_peak else None
    del models
    return rows


def sweep(args, device, dtype) -> list[dict]:
    rows = []
    for width in args.sweep_widths:
        rows_d = measure_size(
            width, args.sweep_tokens, list(SWEEP_METHODS), args.sweep_repeats, args.warmup, device, dtype, args.seed
        )
        by = {r["method"]: r for r in rows_d}
        frozen = by[FROZEN]["median_ms"]
        rows.append(
            {
                "width": width,
                "tokens": args.sweep_tokens,
                "frozen_ms": frozen,
                "goft_ms": by[STRICT]["median_ms"],
                "lora_ms": by[LORA]["median_ms"],
                "goft_overhead": by[STRICT]["median_ms"] / frozen - 1,
                "lora_overhead": by[LORA]["median_ms"] / frozen - 1,
                "goft_vs_lora": by[STRICT]["median_ms"] / by[LORA]["median_ms"],
            }
        )
        print(
            f"  sweep d={width}: frozen {frozen:.1f} ms, GOFT +{rows[-1]['goft_overhead']:.1%}, "
            f"LoRA +{rows[-1]['lora_overhead']:.1%}",
            flush=True,
        )
    return rows


def targets(rows: list[dict], device: torch.device, dtype: torch.dtype) -> list[dict]:
    """The performance targets this run can speak to, with the measured ratio."""
    checks = []
    by = {(r["method"], r["width"], r["tokens"]): r for r in rows}
    applicable = (device.type == "cpu" and dtype == torch.float32, device.type == "cuda" and dtype == torch.bfloat16)
    for (width, tokens), limit in (TARGETS if applicable[0] else CUDA_TARGETS if applicable[1] else {}).items():
        row = by.get((STRICT, width, tokens))
        if row is not None:
            checks.append(
                {
                    "target": f"time, d={width}, {tokens} tokens",
                    "ratio": row["time_vs_lora"],
                    "limit": limit,
                    "met": row["time_vs_lora"] <= limit,
                }
            )
    for row in rows:
        if row["method"] == STRICT and row["saved_vs_lora"] is not None:
            checks.append(
                {
                    "target": f"saved bytes, d={row['width']}, {row['tokens']} tokens",
                    "ratio": row["saved_vs_lora"],
                    "limit": 1.0,
                    "met": row["saved_vs_lora"] <= 1.0,
                }
            )
    return checks


def _ratio(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def report(rows: list[dict], sweep_rows: list[dict], checks: list[dict]) -> str:
    parts = []
    with_peak = any(r["peak_step_bytes"] is not None for r in rows)
    peak_columns = ["peak MiB", "peak × LoRA"] if with_peak else []
    for width, tokens in dict.fromkeys((r["width"], r["tokens"]) for r in rows):
        parts.append(f"\nd = {width}, {tokens} tokens (forward + backward)\n")
        parts.append(
            markdown_table(
                ["method", "median ms", "× LoRA", "saved MiB", "saved × LoRA", *peak_columns, "trainable params"],
                [
                    [
                        r["method"],
                        f"{r['median_ms']:.2f}",
                        f"{r['time_vs_lora']:.2f}",
                        f"{r['saved_bytes'] / 2**20:.1f}",
                        _ratio(r["saved_vs_lora"]),
                        *([f"{r['peak_step_bytes'] / 2**20:.1f}", _ratio(r["peak_vs_lora"])] if with_peak else []),
                        f"{r['trainable_parameters']:,}",
                    ]
                    for r in rows
                    if (r["width"], r["tokens"]) == (width, tokens)
                ],
            )
        )
    if sweep_rows:
        parts.append(f"\nOverhead over the frozen Linear, {sweep_rows[0]['tokens']} tokens\n")
        parts.append(
            markdown_table(
                ["d", "frozen ms", "GOFT strict", "LoRA r=16", "GOFT × LoRA"],
                [
                    [
                        s["width"],
                        f"{s['frozen_ms']:.1f}",
                        f"+{s['goft_overhead']:.1%}",
                        f"+{s['lora_overhead']:.1%}",
                        f"{s['goft_vs_lora']:.2f}",
                    ]
                    for s in sweep_rows
                ],
            )
        )
    if checks:
        parts.append("\nTargets\n")
        parts.append(
            markdown_table(
                ["target", "GOFT / LoRA", "limit", "met"],
                [
                    [c["target"], f"{c['ratio']:.2f}", f"≤ {c['limit']:.2f}", "yes" if c["met"] else "NO"]
                    for c in checks
                ],
            )
        )
    return "\n".join(parts)


def main(args: LayerBenchmarkArguments) -> dict:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows = []
    for width, tokens in args.parsed_sizes:
        print(f"measuring d={width}, {tokens} tokens: {', '.join(args.methods)}", flush=True)
        rows += measure_size(width, tokens, args.methods, args.repeats, args.warmup, device, dtype, args.seed)
    sweep_rows = sweep(args, device, dtype) if args.sweep_widths else []
    checks = targets(rows, device, dtype)
    results = {
        "benchmark": "layer",
        "machine": machine(device),
        "dtype": args.dtype,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "results": rows,
        "sweep": sweep_rows,
        "targets": checks,
    }
    print(f"\n{results['machine']['device']}, {args.dtype}, median of {args.repeats}")
    print(report(rows, sweep_rows, checks))
    path = write_json(args.output, results)
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    (parsed,) = HfArgumentParser(LayerBenchmarkArguments).parse_args_into_dataclasses()
    main(parsed)
