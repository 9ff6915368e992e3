"""Compatibility alias: the datasets live in the package :mod:`arturo_diag.training.datasets`
(one module per family, one registry). Import from there; this module only re-exports it."""

from arturo_diag.training.datasets import *  # noqa: F403 - the compatibility alias re-exports all
from arturo_diag.training.datasets import __all__  # noqa: F401 - the same public names
