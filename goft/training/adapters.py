"""Which adapter a recipe trains, the alignment-stage rule (exactly orthogonal only), and reference adapters."""

import logging

from peft import LoraConfig, PeftConfig

from ..config import GivensConfig
from .errors import RecipeError

logger = logging.getLogger(__name__)

POLICY_ADAPTER = "default"


def build_adapter_config(adapter_args, model_args) -> PeftConfig:
    """The peft config for a fresh adapter, from the recipe's `adapter*` / `givens_*` / `lora_*` keys."""
    if model_args.use_peft and adapter_args.adapter != "lora":
        raise RecipeError("`use_peft` selects TRL's LoRA; in goft recipes choose the method with `adapter: lora` "
                          "(or keep the default `adapter: givens`) and drop `use_peft`.")
    target_modules = adapter_args.adapter_target_modules
    if isinstance(target_modules, list) and len(target_modules) == 1:
        target_modules = target_modules[0]  # a single "all-linear" or regex, as peft expects it
    if adapter_args.adapter == "givens":
        orthogonal = not (adapter_args.givens_quasi or adapter_args.givens_scaling)
        return GivensConfig(task_type="CAUSAL_LM", target_modules=target_modules, strict=orthogonal,
                            quasi=adapter_args.givens_quasi, scaling=adapter_args.givens_scaling,
                            orthogonality_penalty_weight=adapter_args.givens_penalty_weight)
    if adapter_args.adapter == "lora":
        return LoraConfig(task_type="CAUSAL_LM", r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                          lora_dropout=model_args.lora_dropout,
                          target_modules=model_args.lora_target_modules or target_modules or "all-linear",
                          modules_to_save=model_args.lora_modules_to_save, use_rslora=model_args.use_rslora,
                          use_dora=model_args.use_dora)
    raise RecipeError(f"Unknown `adapter` {adapter_args.adapter!r}: choose givens or lora.")


def describe_adapter(config: PeftConfig) -> str:
    """One line naming the method and its strictness, for logs and model cards."""
    if isinstance(config, GivensConfig):
        if config.is_orthogonal:
            return "GOFT (strict Givens rotations, exactly orthogonal)"
        parts = [p for p, on in (("quasi-Givens qGOFT", config.quasi), ("norm scaling GOFT*", config.scaling)) if on]
        return f"Givens adapter with {' + '.join(parts)} (not exactly orthogonal)"
    return f"{config.peft_type.value if hasattr(config.peft_type, 'value') else config.peft_type} (not orthogonal)"


def is_exactly_orthogonal(config: PeftConfig) -> bool:
    return isinstance(config, GivensConfig) and config.is_orthogonal


def require_orthogonal_adapter(config: PeftConfig, stage: str, allow_non_orthogonal: bool) -> None:
    """Alignment stages keep the pretrained weights' geometry: only an exactly orthogonal adapter may train them."""
    if is_exactly_orthogonal(config):
        return
    reason = describe_adapter(config)
    if allow_non_orthogonal:
        logger.warning("!" * 78)
        logger.warning("%s is training a %s. Alignment stages are meant to be strictly orthogonal; this run was "
                       "allowed by `allow_non_orthogonal_alignment: true` and its model card says so.", stage, reason)
        logger.warning("!" * 78)
        return
    raise RecipeError(
        f"The {stage} stage trains only exactly orthogonal adapters, so that alignment cannot distort the pretrained "
        f"weights' geometry (the angles between neurons), but this recipe asks for a {reason}. Fix: use "
        "`adapter: givens` with `givens_quasi: false` and `givens_scaling: false` (or start from a strict GOFT SFT "
        "adapter). For a baseline experiment only, `allow_non_orthogonal_alignment: true` lifts this check."
    )


def copy_adapter_weights(model, source: str, target: str) -> int:
    """Make adapter `target` an exact frozen copy of adapter `source`; returns how many tensors were copied."""
    parameters = dict(model.named_parameters())
    copied = 0
    for name, parameter in parameters.items():
        parts = name.split(".")
        if source not in parts:
            continue
        target_name = ".".join(target if part == source else part for part in parts)
        if target_name not in parameters:
            raise RecipeError(f"Adapter {target!r} has no tensor matching {name!r}; its config differs from {source!r}.")
        target_parameter = parameters[target_name]
        target_parameter.data.copy_(parameter.data)
        target_parameter.requires_grad_(False)
        copied += 1
    if copied == 0:
        raise RecipeError(f"Adapter {source!r} has no parameters to copy.")
    return copied
