"""Builders that map the guide's config sections onto library objects (kept out of ``$`` expressions)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pivot_monai.losses import MultiTaskDetectionLoss, build_loss

__all__ = ["build_training_loss"]

_LOSS_SECTIONS = ("detection", "regression", "classification", "multi_task")


def build_training_loss(
    loss: Mapping[str, Any] | None, mining: Mapping[str, Any] | None = None
) -> MultiTaskDetectionLoss:
    """The multi-task loss from ``training.loss`` and ``training.hard_negative_mining``.

    ``training.loss.multi_task`` holds the component weights. When ``training.hard_negative_mining.enabled`` and
    its ``voxel_selection`` are both on, the detection loss also keeps only ``neg_pos_ratio`` negative voxels per
    positive voxel, a ``batch_hard_ratio`` share of them the hardest (voxel-level OHEM). It is off by default: the
    focal loss already weights voxels by difficulty, and OHEM on top drops almost every background voxel of a
    patch (a 4 mm nodule has ~10 positive voxels), which measured more false positives.

    Raises:
        ValueError: unknown key under ``training.loss``.
    """
    loss = dict(loss or {})
    unknown = sorted(set(loss) - set(_LOSS_SECTIONS))
    if unknown:
        raise ValueError(f"training.loss: unknown key(s) {unknown}; valid: {list(_LOSS_SECTIONS)}")
    mining = dict(mining or {})
    cfg: dict[str, Any] = {k: loss[k] for k in ("detection", "regression", "classification") if k in loss}
    if "multi_task" in loss:
        cfg["weights"] = loss["multi_task"]
    cfg["hard_negative"] = {
        "enabled": bool(mining.get("enabled", False)) and bool(mining.get("voxel_selection", False)),
        "neg_pos_ratio": float(mining.get("neg_pos_ratio", 3.0)),
        "batch_hard_ratio": float(mining.get("batch_hard_ratio", 0.5)),
    }
    return build_loss(cfg)
