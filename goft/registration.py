"""The one patch goft makes to peft: members for goft's methods (``GIVENS``, ``SORSA``) in ``PeftType``, and their
registration.

peft only accepts methods whose name is a member of its ``PeftType`` enum, and Python enums cannot grow through
their public API, so the member is added to the enum's internal tables. Both steps are idempotent: importing goft
again, or importing it in a fresh process, is harmless.
"""

from __future__ import annotations

from peft.utils import PeftType

NAME = "givens"


def _extend_peft_type(value: str) -> PeftType:
    """Add ``value`` to ``PeftType`` (a ``str`` enum) unless it is already there, and return the member."""
    if value in PeftType.__members__:
        return PeftType[value]
    member = str.__new__(PeftType, value)
    member._name_ = value
    member._value_ = value
    member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_map_[value] = member
    PeftType._value2member_map_[value] = member
    PeftType._member_names_.append(value)
    type.__setattr__(PeftType, value, member)
    return member


GIVENS = _extend_peft_type(NAME.upper())
"""``PeftType.GIVENS``: the ``peft_type`` of a Givens adapter's config (``GivensConfig``)."""
SORSA = _extend_peft_type("SORSA")
"""``PeftType.SORSA``: the ``peft_type`` of a SORSA adapter's config (``SorsaConfig``)."""


def register(config_cls, model_cls, name: str = NAME) -> None:
    """Register a goft method (``givens`` by default) with peft once per process."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    peft_type = _extend_peft_type(name.upper())
    if peft_type in PEFT_TYPE_TO_TUNER_MAPPING:
        # already registered (a reload of goft re-creates the classes: point peft at the new ones)
        PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
        PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = model_cls
        return
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls)
