"""What the benchmarks measure, and how: interleaved timing, bytes saved for backward, peak memory, the machine."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def checked_device_and_dtype(device: str, dtype: str | None) -> str:
    """The dtype a benchmark runs in (default: float32 on CPU, bfloat16 on CUDA), after refusing a device this machine
    lacks or a name that is not a torch dtype."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device.")
    dtype = dtype or ("bfloat16" if device == "cuda" else "float32")
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"--dtype {dtype!r} is not a torch dtype.")
    return dtype


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    cases: dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device
) -> dict[str, dict]:
    """Time every case once per round, round after round, so that drifts of the machine hit all cases alike.

    Returns, per case, the median and the spread (min, max) in milliseconds over ``repeats`` rounds after
    ``warmup`` untimed ones.
    """
    times = {name: [] for name in cases}
    for round_index in range(warmup + repeats):
        for name, case in cases.items():
            synchronize(device)
            start = time.perf_counter()
            case()
            synchronize(device)
            if round_index >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: {"median_ms": statistics.median(ts), "min_ms": min(ts), "max_ms": max(ts), "repeats": len(ts)}
        for name, ts in times.items()
    }


def saved_bytes(fn: Callable[[], object], exclude: list[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs, ``exclude``'s not counted.

    Storages are counted once however many saved tensors view them, which is what they cost in memory.
    """
    skipped = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skipped:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set size to its current size (Linux); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since start or the last `reset_peak_rss` (Linux's VmHWM)."""
    return _status_bytes("VmHWM")


def rss_bytes() -> int:
    """Current resident set size of this process (Linux's VmRSS)."""
    return _status_bytes("VmRSS")


def _status_bytes(field_name: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise OSError(f"{field_name} is not reported by /proc/self/status on this system.")


def machine(device: torch.device) -> dict:
    """What the numbers were measured on."""
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
    else:
        info["device"] = f"CPU: {_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
