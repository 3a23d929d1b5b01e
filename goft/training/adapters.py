"""Which adapter a recipe trains, the alignment-stage rule (exactly orthogonal only), and reference adapters."""

import logging
import re

from peft import BOFTConfig, HRAConfig, LoraConfig, OFTConfig, PeftConfig, RoadConfig

from goft.errors import RecipeError
from goft.methods import describe_method, is_exactly_orthogonal
from goft.tuners.givens.config import GivensConfig
from goft.tuners.sorsa import SorsaConfig

logger = logging.getLogger(__name__)

POLICY_ADAPTER = "default"
TASK_TYPE = "CAUSAL_LM"


REGEX_CHARACTERS = re.compile(r"[\\^$*+?()\[\]{}|]")


def _target_modules(adapter_args):
    """peft reads a string as "all-linear" or a regex matched against the whole module name, and a list as names
    (suffixes): one plain name given alone stays a list, so that it matches like several would."""
    target_modules = adapter_args.adapter_target_modules
    if isinstance(target_modules, list) and len(target_modules) == 1:
        only = target_modules[0]
        if only == "all-linear" or REGEX_CHARACTERS.search(only):
            return only
    return target_modules


def _givens_config(adapter_args, model_args, target_modules) -> PeftConfig:
    orthogonal = not (adapter_args.givens_quasi or adapter_args.givens_scaling)
    return GivensConfig(
        task_type=TASK_TYPE,
        target_modules=target_modules,
        strict=orthogonal,
        quasi=adapter_args.givens_quasi,
        scaling=adapter_args.givens_scaling,
        orthogonality_penalty_weight=adapter_args.givens_penalty_weight,
        max_angle=adapter_args.givens_max_angle,
    )


def _sorsa_config(adapter_args, model_args, target_modules) -> PeftConfig:
    return SorsaConfig(
        task_type=TASK_TYPE, target_modules=target_modules, r=adapter_args.sorsa_r, gamma=adapter_args.sorsa_gamma
    )


def _hra_config(adapter_args, model_args, target_modules) -> PeftConfig:
    return HRAConfig(
        task_type=TASK_TYPE, target_modules=target_modules, r=adapter_args.hra_r, apply_GS=adapter_args.hra_apply_gs
    )


def _oft_config(adapter_args, model_args, target_modules) -> PeftConfig:
    return OFTConfig(
        task_type=TASK_TYPE,
        target_modules=target_modules,
        r=0,
        oft_block_size=adapter_args.oft_block_size,
        use_cayley_neumann=adapter_args.oft_use_cayley_neumann,
    )


def _boft_config(adapter_args, model_args, target_modules) -> PeftConfig:
    return BOFTConfig(
        task_type=TASK_TYPE,
        target_modules=target_modules,
        boft_block_size=adapter_args.boft_block_size,
        boft_n_butterfly_factor=adapter_args.boft_n_butterfly_factor,
    )


def _road_config(adapter_args, model_args, target_modules) -> PeftConfig:
    return RoadConfig(
        task_type=TASK_TYPE,
        target_modules=target_modules,
        variant=adapter_args.road_variant,
        group_size=adapter_args.road_group_size,
    )


def _lora_config(adapter_args, model_args, target_modules) -> PeftConfig:
    """TRL's LoRA from its `lora_*` keys (and `use_rslora`, `use_dora`), as TRL's scripts build it."""
    if model_args.lora_task_type != TASK_TYPE:
        raise RecipeError(
            f"`lora_task_type` is {model_args.lora_task_type!r}, but the recipes train causal language models: "
            f"drop the key (or set `lora_task_type: {TASK_TYPE}`)."
        )
    extra = {"target_parameters": model_args.lora_target_parameters} if model_args.lora_target_parameters else {}
    return LoraConfig(
        **extra,
        task_type=TASK_TYPE,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules or target_modules or "all-linear",
        modules_to_save=model_args.lora_modules_to_save,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
    )


CONFIG_BUILDERS = {
    "givens": _givens_config,
    "sorsa": _sorsa_config,
    "hra": _hra_config,
    "oft": _oft_config,
    "boft": _boft_config,
    "road": _road_config,
    "lora": _lora_config,
}


def build_adapter_config(adapter_args, model_args) -> PeftConfig:
    """The peft config for a fresh adapter, from the recipe's `adapter` key and that method's own keys."""
    if model_args.use_peft and adapter_args.adapter != "lora":
        raise RecipeError(
            "`use_peft` selects TRL's LoRA; in goft recipes choose the method with `adapter: lora` "
            "(or keep the default `adapter: givens`) and drop `use_peft`."
        )
    builder = CONFIG_BUILDERS.get(adapter_args.adapter)
    if builder is None:
        raise RecipeError(f"Unknown `adapter` {adapter_args.adapter!r}: choose one of {', '.join(CONFIG_BUILDERS)}.")
    try:
        return builder(adapter_args, model_args, _target_modules(adapter_args))
    except ValueError as error:  # the config's own checks (e.g. SORSA's r >= 1, OFT's block sizes)
        raise RecipeError(f"Invalid `{adapter_args.adapter}` adapter settings: {error}") from None


def require_orthogonal_adapter(config: PeftConfig, stage: str, allow_non_orthogonal: bool) -> None:
    """Alignment stages keep the pretrained weights' geometry: only strict GOFT may train them."""
    if is_exactly_orthogonal(config):
        return
    reason = describe_method(config)
    if allow_non_orthogonal:
        logger.warning("!" * 78)
        logger.warning(
            "%s is training a %s. Alignment stages are meant to be strictly orthogonal; this run was "
            "allowed by `allow_non_orthogonal_alignment: true` and its model card says so.",
            stage,
            reason,
        )
        logger.warning("!" * 78)
        return
    raise RecipeError(
        f"The {stage} stage trains only exactly orthogonal adapters (strict GOFT, whose orthogonality is checked "
        f"when it is saved), so that alignment cannot distort the pretrained weights' geometry (the angles between "
        f"neurons), but this recipe asks for: {reason}. Fix: use "
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
            raise RecipeError(
                f"Adapter {target!r} has no tensor matching {name!r}; its config differs from {source!r}."
            )
        target_parameter = parameters[target_name]
        target_parameter.data.copy_(parameter.data)
        target_parameter.requires_grad_(False)
        copied += 1
    if copied == 0:
        raise RecipeError(f"Adapter {source!r} has no parameters to copy.")
    return copied
