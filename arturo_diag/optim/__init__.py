"""arTuRO as a torch optimizer. Imports nothing else of arturo-diag: copy it out and use it."""

from .arturo import Arturo
from .presets import LR_GAMMA, PRESET_NAMES, PRESETS, load_preset

__all__ = ["LR_GAMMA", "PRESETS", "PRESET_NAMES", "Arturo", "load_preset"]
