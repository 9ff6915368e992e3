"""arTuRO as a torch optimizer. Imports nothing else of arturo-diag: copy it out and use it."""
from .arturo import PRESETS, Arturo, load_preset

__all__ = ["Arturo", "PRESETS", "load_preset"]
