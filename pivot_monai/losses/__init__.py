"""Losses stage of PIVOT: focal/dice heatmap loss, hard-negative selection, masked regression and triage losses."""

from __future__ import annotations

from pivot_monai.losses.detection import HEATMAP_LOSS_TYPES, HeatmapLoss, select_hard_negatives
from pivot_monai.losses.masked import MaskedBCEWithLogitsLoss, MaskedSmoothL1Loss, masked_mean
from pivot_monai.losses.multitask import (
    LOSS_DEFAULTS,
    TARGET_KEYS,
    MultiTaskDetectionLoss,
    build_loss,
    downsample_targets,
)

__all__ = [
    "HEATMAP_LOSS_TYPES",
    "LOSS_DEFAULTS",
    "TARGET_KEYS",
    "HeatmapLoss",
    "MaskedBCEWithLogitsLoss",
    "MaskedSmoothL1Loss",
    "MultiTaskDetectionLoss",
    "build_loss",
    "downsample_targets",
    "masked_mean",
    "select_hard_negatives",
]
