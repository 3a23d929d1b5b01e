"""The process a recipe runs in: which device it has, how many CPU threads it uses, its rank, and leaving the
process group at the end; how a run was spread over its processes."""

import os

import torch
from accelerate.utils import DistributedType


def has_accelerator() -> bool:
    """Whether this machine has a GPU-like device (CUDA, MPS or XPU) that torch can use."""
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or bool(xpu and xpu.is_available())


def use_all_cpu_cores() -> None:
    """`accelerate launch` pins CPU-only processes to one thread each (OMP_NUM_THREADS=1); share the cores instead."""
    if has_accelerator() or torch.get_num_threads() > 1:
        return
    per_process = (os.cpu_count() or 1) // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    if per_process > 1:
        torch.set_num_threads(per_process)


def is_main_process() -> bool:
    """Whether this is the launch's main process, before any accelerator exists (RANK is set by the launchers)."""
    return int(os.environ.get("RANK", "0")) == 0


def leave_process_group(together: bool = True) -> None:
    """Tear the process group down before exit: left to interpreter shutdown, gloo's threads can abort a finished
    multi-process run ("terminate called without an active exception"). `together`: every process got here (a
    finished run), so they first wait for each other and none closes its connections while another still writes."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if together:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def parallelism(accelerator) -> str:
    """How the run was spread over its processes: 'FSDP1', 'FSDP2', 'DeepSpeed ZeRO-N', 'DDP' or 'one process'."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return f"FSDP{accelerator.state.fsdp_plugin.fsdp_version}"
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return f"DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
    return "DDP" if accelerator.num_processes > 1 else "one process"
