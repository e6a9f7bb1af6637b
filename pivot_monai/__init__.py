"""PIVOT: a MONAI-based 3D lung-nodule detector for chest CT."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
