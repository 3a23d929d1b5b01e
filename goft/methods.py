"""The names of adapter methods, decided once: peft's type name, a short label for tables, a one-line description for
logs and model cards, and whether the method is exactly orthogonal (strict GOFT)."""

from peft import OFTConfig, PeftConfig

from goft.tuners.givens.config import GivensConfig

DESCRIPTIONS = {
    "SORSA": "SORSA (trainable singular vectors and values; not orthogonal)",
    "HRA": "HRA (Householder reflections)",
    "OFT": "OFT (block-diagonal Cayley rotations)",
    "BOFT": "BOFT (butterfly-factorised Cayley rotations)",
    "ROAD": "RoAd (scaled 2D rotations of the outputs; not orthogonal)",
    "LORA": "LoRA (low-rank update; not orthogonal)",
}


def peft_type_name(config: PeftConfig) -> str:
    """peft's name of the method, as adapter_config.json records it: 'GIVENS', 'LORA', ..."""
    return str(getattr(config.peft_type, "value", config.peft_type))


def is_exactly_orthogonal(config: PeftConfig) -> bool:
    """Strict GOFT: every adapter built from `config` is an exact rotation (angles only, no quasi blocks, no scale)."""
    return isinstance(config, GivensConfig) and config.is_orthogonal


def method_label(config: PeftConfig) -> str:
    """A short label for tables: 'givens (strict)', 'givens (qGOFT + GOFT*)', 'lora', ..."""
    method = peft_type_name(config).lower()
    if isinstance(config, GivensConfig):
        variant = [v for v, on in (("qGOFT", config.quasi), ("GOFT*", config.scaling)) if on] or ["strict"]
        return f"{method} ({' + '.join(variant)})"
    return method


def describe_method(config: PeftConfig) -> str:
    """One line naming the method and its strictness, for logs and model cards."""
    if isinstance(config, GivensConfig):
        if config.is_orthogonal:
            return "GOFT (strict Givens rotations, exactly orthogonal)"
        parts = [p for p, on in (("quasi-Givens qGOFT", config.quasi), ("norm scaling GOFT*", config.scaling)) if on]
        return f"Givens adapter with {' + '.join(parts)} (not exactly orthogonal)"
    if isinstance(config, OFTConfig) and config.use_cayley_neumann:
        return "OFT (block-diagonal rotations, Neumann-approximated Cayley: not exactly orthogonal)"
    return DESCRIPTIONS.get(peft_type_name(config), peft_type_name(config))
