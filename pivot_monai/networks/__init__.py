"""Networks stage of PIVOT: the BasicUNet-derived multi-head nodule detector and its config factory."""

from __future__ import annotations

from pivot_monai.networks.detector import ACTIVATIONS, OUTPUT_KEYS, OUTPUT_STRIDES, PivotDetector, PredictionHead
from pivot_monai.networks.factory import MODEL_TYPES, build_network, count_parameters, import_class

__all__ = [
    "ACTIVATIONS",
    "MODEL_TYPES",
    "OUTPUT_KEYS",
    "OUTPUT_STRIDES",
    "PivotDetector",
    "PredictionHead",
    "build_network",
    "count_parameters",
    "import_class",
]
