"""``GivensConfig``: the peft configuration of a Givens (GOFT / qGOFT / GOFT*) adapter."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from goft.registration import GIVENS


@dataclass
class GivensConfig(PeftConfig):
    """Configuration of a Givens orthogonal fine-tuning adapter (Ma et al., ICML 2024).

    Every adapted layer computes ``y = W diag(s) Rᵀ x``: ``R`` is a product of ``d − 1`` Givens rotations in
    ``ceil(log2 d)`` parallel stages on the layer's input side, and ``s`` a per-input scale (only with ``scaling``).

    Modes:
        * strict (default): ``d − 1`` angles, ``R`` exactly orthogonal; the angles between the layer's neurons are
          preserved. Use it for alignment stages (DPO).
        * quasi (``strict=False, quasi=True``): each rotation becomes a free 2×2 block (qGOFT, 4(d − 1) parameters)
          kept near-orthogonal by a soft penalty of weight ``orthogonality_penalty_weight``.
        * scaling (``strict=False, scaling=True``): GOFT*, adds the norm scale ``s`` (d parameters).

    Args:
        target_modules: module names (exact or suffix), a regex, or ``"all-linear"``; default: all attention and MLP
            projections of known architectures.
        exclude_modules: names or a regex of modules never to adapt.
        strict: angles only, exactly orthogonal. Must be False to use ``quasi`` or ``scaling``.
        quasi: free 2×2 blocks instead of rotations (qGOFT).
        scaling: learn a per-input scale (GOFT*).
        max_angle: bound on every rotation angle, ``θ = max_angle · tanh(a)`` (π: unbounded in effect). A small
            bound limits how far each input pair can turn, whatever the learning rate.
        orthogonality_penalty_weight: λ of the qGOFT penalty ``λ Σ (M00·M01 + M10·M11)²`` (paper: 0.01 for LLaMA).
        init_weights: True starts at the identity (the adapted model equals the base model); False starts from a
            random, non-identity adapter (for tests).
        layers_to_transform / layers_pattern: restrict adaptation to these layer indices.
        modules_to_save: other modules to train fully and save with the adapter.
    """

    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Module names (exact or suffix), a regex, or 'all-linear'. Defaults to all attention and MLP "
            "projections of known architectures."
        },
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or a regex of modules not to adapt."}
    )
    strict: bool = field(
        default=True,
        metadata={"help": "Angles only: the rotation is exactly orthogonal. Set False to use quasi or scaling."},
    )
    quasi: bool = field(
        default=False, metadata={"help": "qGOFT: free 2x2 blocks (4(d-1) parameters), softly kept orthogonal."}
    )
    scaling: bool = field(default=False, metadata={"help": "GOFT*: learn a per-input norm scale (d parameters)."})
    max_angle: float = field(
        default=math.pi,
        metadata={"help": "Bound on every rotation angle (radians), theta = max_angle * tanh(a); in (0, pi]."},
    )
    orthogonality_penalty_weight: float = field(
        default=0.01, metadata={"help": "Weight of the qGOFT soft orthogonality penalty (quasi mode only)."}
    )
    init_weights: bool = field(
        default=True,
        metadata={"help": "True: identity at init. False: a random non-identity adapter (for testing)."},
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None, metadata={"help": "Only adapt the layers with these indices."}
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Name of the layer list (e.g. 'layers' or 'h') when layers_to_transform is used."},
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules apart from Givens layers to train fully and save."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = GIVENS
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if self.strict and (self.quasi or self.scaling):
            asked = " and ".join(name for name, on in (("quasi", self.quasi), ("scaling", self.scaling)) if on)
            raise ValueError(
                f"GivensConfig(strict=True) cannot be combined with {asked}: strict means exactly orthogonal "
                f"(angles only), and {asked} makes the adapter non-orthogonal. Pass strict=False to use {asked}, "
                "or drop it to keep the adapter strictly orthogonal."
            )
        if not 0 < self.max_angle <= math.pi:
            raise ValueError(f"max_angle must be in (0, pi], got {self.max_angle}.")
        if self.orthogonality_penalty_weight < 0:
            raise ValueError(f"orthogonality_penalty_weight must be >= 0, got {self.orthogonality_penalty_weight}.")
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError(
                f"layers_to_transform cannot be combined with target_modules={self.target_modules!r} (a regex or "
                "'all-linear'); list the module names instead, e.g. target_modules=['q_proj', 'v_proj']."
            )
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("layers_pattern requires layers_to_transform to be set as well.")

    @property
    def is_orthogonal(self) -> bool:
        """True when every adapter built from this config is exactly orthogonal (angles only)."""
        return not (self.quasi or self.scaling)
