"""PIVOT: a MONAI-based 3D lung-nodule detector for chest CT."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep rather than spin (must be set before torch loads libgomp): on small CPU machines a
# DataLoader worker plus spinning compute threads oversubscribe the cores and make steps erratic and several times
# slower. Has no effect when torch was imported first or when the user set it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["__version__"]
