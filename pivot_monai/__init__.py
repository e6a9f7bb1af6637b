"""PIVOT: a MONAI-based 3D lung-nodule detector for chest CT.

Importing the package changes no process state; the ``pivot`` command applies the host's settings
(:mod:`pivot_monai.host`).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
