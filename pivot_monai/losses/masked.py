"""Losses evaluated only at nodule voxels: diameter regression and malignancy triage.

Both average a per-voxel ``torch.nn`` loss over the voxels where ``mask`` is set. A batch without nodule voxels gives
exactly 0 (never NaN), and the result stays connected to the prediction so every head receives a (zero) gradient,
which keeps ``DistributedDataParallel`` happy. The masked mean uses sums rather than boolean indexing, so it does
not synchronise a GPU with the host.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["MaskedBCEWithLogitsLoss", "MaskedSmoothL1Loss", "masked_mean"]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the voxels where ``mask`` is true; 0 when the mask is empty.

    Args:
        values: (B, 1, D, H, W) per-voxel values.
        mask: (B, 1, D, H, W) bool or {0, 1} mask, same shape as ``values``.

    Returns:
        scalar tensor.

    Raises:
        ValueError: if the shapes differ.
    """
    if values.shape != mask.shape:
        raise ValueError(f"values and mask must have the same shape, got {list(values.shape)} and {list(mask.shape)}")
    mask = mask.bool()
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp_min(1).to(values.dtype)


def _check_shapes(name: str, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
    if not pred.shape == target.shape == mask.shape:
        raise ValueError(
            f"{name}: prediction, target and mask must have the same shape, got {list(pred.shape)}, "
            f"{list(target.shape)} and {list(mask.shape)}"
        )


class MaskedSmoothL1Loss(nn.Module):
    """Smooth L1 on the diameter head at nodule voxels, in units of ``scale_mm``.

    Prediction and target (both mm) are divided by ``scale_mm`` before ``torch.nn.SmoothL1Loss(beta=beta)``, so with
    the defaults an error of 10 mm costs ``1 - beta / 2`` and the loss is quadratic below ``beta * scale_mm`` mm.

    Args:
        beta: smooth L1 transition point (in units of ``scale_mm``). Defaults to 1.0.
        scale_mm: normalisation of diameters in mm. Defaults to 10.0.

    Raises:
        ValueError: if ``beta < 0`` or ``scale_mm <= 0``.
    """

    def __init__(self, beta: float = 1.0, scale_mm: float = 10.0) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        if scale_mm <= 0:
            raise ValueError(f"scale_mm must be > 0, got {scale_mm!r}")
        self.scale_mm = float(scale_mm)
        self.loss = nn.SmoothL1Loss(reduction="none", beta=float(beta))

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Compute the masked loss.

        Args:
            pred: (B, 1, D, H, W) predicted diameter in mm.
            target: (B, 1, D, H, W) target diameter in mm (ignored outside the mask; keep it finite).
            mask: (B, 1, D, H, W) bool nodule-voxel mask.

        Returns:
            scalar loss; 0 when ``mask`` is empty.
        """
        _check_shapes("diameter loss", pred, target, mask)
        per_voxel = self.loss(pred.float() / self.scale_mm, target.float() / self.scale_mm)
        return masked_mean(per_voxel, mask)


class MaskedBCEWithLogitsLoss(nn.Module):
    """Binary cross-entropy with logits on the malignancy head at nodule voxels.

    Wraps ``torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)``: malignant voxels (target 1) are weighted by
    ``pos_weight``.

    Args:
        pos_weight: weight of the positive (malignant) class, > 0. Defaults to 1.0.

    Raises:
        ValueError: if ``pos_weight <= 0``.
    """

    def __init__(self, pos_weight: float = 1.0) -> None:
        super().__init__()
        if pos_weight <= 0:
            raise ValueError(f"pos_weight must be > 0, got {pos_weight!r}")
        self.loss = nn.BCEWithLogitsLoss(reduction="none", pos_weight=torch.tensor([float(pos_weight)]))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Compute the masked loss.

        Args:
            logits: (B, 1, D, H, W) malignancy logits.
            target: (B, 1, D, H, W) malignancy label in [0, 1] (ignored outside the mask; keep it finite).
            mask: (B, 1, D, H, W) bool nodule-voxel mask.

        Returns:
            scalar loss; 0 when ``mask`` is empty.
        """
        _check_shapes("malignancy loss", logits, target, mask)
        per_voxel = self.loss(logits.float(), target.float())
        return masked_mean(per_voxel, mask)
