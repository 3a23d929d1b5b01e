"""The Givens method (GOFT, qGOFT, GOFT*) as a peft tuner: `GivensConfig`, `GivensLayer`, `GivensModel`."""

from goft.tuners.givens.config import GivensConfig
from goft.tuners.givens.layer import GivensLayer
from goft.tuners.givens.model import GivensModel

__all__ = ["GivensConfig", "GivensLayer", "GivensModel"]
