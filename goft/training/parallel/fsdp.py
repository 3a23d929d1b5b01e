"""FSDP with adapters: FSDP2 (`fully_shard`) shards the adapter with the base, as DTensors (see `goft.tuners.sharded`);
FSDP1 shards only the frozen base and keeps each adapter's own tensors whole on every process, averaging their
gradients like DDP. Under FSDP1 the adapter would otherwise sit in flat parameters beside frozen weights (mixed
`requires_grad`) and, between forwards, as flat shards that no orthogonality check, regulariser or merge can read."""

import contextlib
import copy
import os
import re

import torch
from peft import get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import SAFETENSORS_WEIGHTS_NAME, load_peft_weights
from safetensors.torch import save_file
from transformers.trainer import TRAINING_ARGS_NAME

from goft.errors import RecipeError


def adapter_containers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The ModuleDicts/ParameterDicts that hold the adapters' own tensors, in every adapted layer (any peft method)."""
    containers = []
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            containers += [getattr(module, name) for name in module.adapter_layer_names if hasattr(module, name)]
    return [c for c in containers if isinstance(c, torch.nn.Module) and any(True for _ in c.parameters())]


def keep_adapters_whole_under_fsdp1(trainer) -> list[torch.nn.Parameter]:
    """Before the trainer wraps the model with FSDP1: leave the adapter tensors out of FSDP's flat parameters (on the
    training device, whole on every process); returns those that train, whose gradients the trainer averages."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if not trainer.is_fsdp_enabled or plugin is None or plugin.fsdp_version != 1:
        return []
    containers = adapter_containers(trainer.model)
    for container in containers:
        container.to(trainer.accelerator.device)
    plugin.ignored_modules = list(plugin.ignored_modules or []) + containers
    return [p for c in containers for p in c.parameters() if p.requires_grad]


FSDP1_PREFIX = "_fsdp_wrapped_module."


def _whole_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An FSDP1-wrapped model's tensors that FSDP left whole (the adapters' own, see `keep_adapters_whole_under_fsdp1`,
    and the buffers), by their names in the wrapped model, read without FSDP's gathering."""
    whole = {id(p) for container in adapter_containers(model) for p in container.parameters()}
    return {name: t for name, t in model.named_parameters() if id(t) in whole} | dict(model.named_buffers())


def save_whole_adapters(model, output_dir: str) -> None:
    """Write every adapter of an FSDP1-wrapped peft model as `save_pretrained` would, from its whole tensors: the
    same files, keys and shapes as without FSDP."""
    whole = {name: t.detach().cpu().clone() for name, t in _whole_tensors(model).items()}
    for adapter_name, config in model.peft_config.items():
        state = get_peft_model_state_dict(model, state_dict=whole, adapter_name=adapter_name)
        folder = output_dir if adapter_name == "default" else os.path.join(output_dir, adapter_name)
        os.makedirs(folder, exist_ok=True)
        save_file(
            {key.replace(FSDP1_PREFIX, ""): t.contiguous() for key, t in state.items()},
            os.path.join(folder, SAFETENSORS_WEIGHTS_NAME),
            metadata={"format": "pt"},
        )
        saved_config = copy.copy(config)
        saved_config.inference_mode = True
        saved_config.save_pretrained(folder)


def load_whole_adapter(model, folder: str, adapter_name: str) -> None:
    """Copy a saved adapter (`save_whole_adapters`) into the whole tensors of adapter `adapter_name`."""
    saved = load_peft_weights(folder)
    by_key = {
        re.sub(rf"\.{re.escape(adapter_name)}(?=\.|$)", "", name.replace(FSDP1_PREFIX, "")): t
        for name, t in _whole_tensors(model).items()
        if f".{adapter_name}" in name
    }
    missing = sorted(set(saved) - set(by_key))
    if missing:
        raise RecipeError(f"The checkpoint {folder} holds adapter tensors this model lacks: {missing[:3]}.")
    with torch.no_grad():
        for key, tensor in saved.items():
            by_key[key].copy_(tensor)


class WholeAdaptersUnderFsdp1Mixin:
    """Mix in before a `transformers.Trainer` subclass, for the adapter tensors kept whole under FSDP1
    (`whole_adapter_parameters`): once the gradients of an optimizer step are accumulated, average theirs over the
    processes, before clipping; save the adapter from them directly, as every process holds it whole."""

    whole_adapter_parameters: tuple = ()

    def save_model(self, output_dir=None, _internal_call=False):
        if not self.whole_adapter_parameters:
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            save_whole_adapters(self.accelerator.unwrap_model(self.model), output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    # What trains is whole on every process, as under DDP: the optimizer state is saved, restored and the adapter
    # reloaded at a resume as without FSDP (FSDP1's own checkpoint would gather every frozen weight to write none).
    @contextlib.contextmanager
    def _trainable_state_as_without_fsdp(self):
        enabled = self.is_fsdp_enabled
        self.is_fsdp_enabled = not self.whole_adapter_parameters and enabled
        try:
            yield
        finally:
            self.is_fsdp_enabled = enabled

    def _save_optimizer_and_scheduler(self, output_dir):
        with self._trainable_state_as_without_fsdp():
            return super()._save_optimizer_and_scheduler(output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint):
        with self._trainable_state_as_without_fsdp():
            return super()._load_optimizer_and_scheduler(checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self.whole_adapter_parameters:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = self.accelerator.unwrap_model(self.model)
        for name in model.active_adapters:
            load_whole_adapter(model, resume_from_checkpoint, name)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.whole_adapter_parameters and self.accelerator.sync_gradients:
            params = self.whole_adapter_parameters  # the same order on every process
            for param in params:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
            flat = torch.cat([param.grad.reshape(-1) for param in params])  # one collective, not one per tensor
            torch.distributed.all_reduce(flat)
            flat.div_(self.accelerator.num_processes)
            for param, averaged in zip(params, flat.split([param.numel() for param in params])):
                param.grad.copy_(averaged.view_as(param.grad))
        return loss
