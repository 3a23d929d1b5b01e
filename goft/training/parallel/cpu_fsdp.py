"""FSDP on machines without an accelerator: accelerate builds its FSDP state only for GPU-like devices, so a CPU-only
`accelerate launch --config_file accelerate_configs/fsdp2.yaml` would quietly run plain DDP. goft turns the
launcher's FSDP request into FSDP over gloo there, with the same sharding, wrapping and saving as on GPUs."""

import functools
import logging
import os

import torch
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

from goft.training.parallel.processes import has_accelerator

logger = logging.getLogger(__name__)
# accelerate reads these (from the launcher's config) to load weights on rank 0 and broadcast them; both need an
# accelerator to build the empty modules on, so on a CPU-only machine every process loads the weights itself
RANK_ZERO_LOADING = ("FSDP_CPU_RAM_EFFICIENT_LOADING", "FSDP_SYNC_MODULE_STATES")


def fsdp_requested() -> bool:
    """Whether `accelerate launch` was asked for FSDP (its config's `distributed_type: FSDP`)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def honour_fsdp_on_cpu() -> None:
    """When FSDP is requested on a CPU-only machine, make accelerate's state FSDP (gloo) once it is built."""
    if not fsdp_requested() or has_accelerator() or getattr(AcceleratorState.__init__, "goft_cpu_fsdp", False):
        return
    for name in RANK_ZERO_LOADING:
        if os.environ.get(name, "").lower() in ("1", "true"):
            logger.warning("%s is ignored without an accelerator: every process loads the weights itself.", name)
        os.environ[name] = "false"
    original = AcceleratorState.__init__

    @functools.wraps(original)
    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # both shared states: every later AcceleratorState() copies the process state over its own; and FSDP
            # compares its modules' device with the state's, which would be `cpu:0`
            PartialState._shared_state.update(distributed_type=DistributedType.FSDP, device=torch.device("cpu"))
            self.distributed_type, self.device = DistributedType.FSDP, torch.device("cpu")
            self.fsdp_plugin = fsdp_plugin
            for config in (fsdp_plugin.state_dict_config, fsdp_plugin.optim_state_dict_config):
                if config is not None:  # FSDP1 "offloads" a CPU tensor to itself and then frees it: a crash
                    config.offload_to_cpu = False

    init.goft_cpu_fsdp = True
    AcceleratorState.__init__ = init
