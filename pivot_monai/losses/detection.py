"""Heatmap (detection) loss: focal (soft-target) or MONAI dice loss, with optional hard-negative selection.

Both losses take heatmap **logits** (the detector's train-mode output) and a soft Gaussian target in [0, 1].

* ``"focal"`` is written here rather than taken from ``monai.losses.FocalLoss``: MONAI's sigmoid focal loss accepts
  soft targets, but its modulating factor ``sigmoid(-x * (2t - 1)) ** gamma`` is not minimised at ``p = t`` (for
  ``gamma > 0`` it drives ``p -> 1`` wherever ``t > 0.5`` and ``p -> 0`` elsewhere), so it learns a plateau at the
  heatmap's 0.5 contour instead of the Gaussian peak that peak decoding needs. :func:`soft_focal_loss` uses the
  modulating factor ``|t - p| ** gamma`` (as in the quality focal loss of Li et al., 2020) and the alpha balance
  ``alpha * t + (1 - alpha) * (1 - t)``: identical to the RetinaNet focal loss for binary targets, and minimised at
  ``p = t`` for soft ones. The sum is normalised by the target mass ``max(1, sum(t))`` (CenterNet-style, so the
  loss does not shrink with the patch volume and keeps its weight against the regression terms).
* ``"dice"``: ``monai.losses.DiceLoss``. ``monai.losses.MaskedDiceLoss`` multiplies the *logits* by the mask before
  the sigmoid, so masked-out voxels count as ``p = 0.5``. Hard-negative selection with dice therefore masks here by
  setting dropped logits to ``-1e4`` (``sigmoid = 0``) and their targets to 0, so they add nothing.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceLoss

__all__ = ["HEATMAP_LOSS_TYPES", "HeatmapLoss", "select_hard_negatives", "soft_focal_loss"]

logger = logging.getLogger(__name__)

HEATMAP_LOSS_TYPES: tuple[str, ...] = ("focal", "dice")
"""Accepted values of the detection loss ``type``."""

_MASKED_LOGIT = -1.0e4  # sigmoid(-1e4) == 0, and still representable in float16


def select_hard_negatives(
    loss_map: torch.Tensor,
    target: torch.Tensor,
    neg_pos_ratio: float,
    batch_hard_ratio: float,
    generator: torch.Generator | None = None,
    pos_threshold: float = 0.5,
    min_negatives: int = 64,
) -> torch.Tensor:
    """Choose the voxels that enter the detection loss: every positive plus a budget of negatives.

    Positives are voxels with ``target >= pos_threshold``; all others are negatives. Counting over the whole batch,
    ``n_neg = max(ceil(neg_pos_ratio * n_pos), min_negatives)`` negatives are kept (fewer if fewer exist):
    ``round(batch_hard_ratio * n_neg)`` of them are the hardest (highest ``loss_map``) and the rest are drawn uniformly
    at random from the remaining negatives. ``min_negatives`` is what a batch with no positive voxel keeps.

    Args:
        loss_map: (B, 1, D, H, W) per-voxel loss or hardness score (higher is harder); not differentiated.
        target: (B, 1, D, H, W) heatmap target in [0, 1].
        neg_pos_ratio: negatives kept per positive voxel, >= 0.
        batch_hard_ratio: fraction of the kept negatives that are the hardest ones, in [0, 1].
        generator: random generator for the random negatives (its device is used for the permutation); ``None``
            uses the global generator.
        pos_threshold: target value from which a voxel is positive. Defaults to 0.5.
        min_negatives: smallest number of negatives kept, >= 0. Defaults to 64.

    Returns:
        (B, 1, D, H, W) bool mask of the voxels to keep (positives and selected negatives).

    Raises:
        ValueError: on mismatched shapes or out-of-range ratios.

    Example:
        >>> loss_map = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.0]).view(1, 1, 5)
        >>> target = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0]).view(1, 1, 5)
        >>> select_hard_negatives(loss_map, target, 2.0, 1.0, min_negatives=0).view(-1).tolist()
        [True, True, True, False, False]
    """
    if loss_map.shape != target.shape:
        raise ValueError(
            f"loss_map and target must have the same shape, got {list(loss_map.shape)} and {list(target.shape)}"
        )
    if neg_pos_ratio < 0:
        raise ValueError(f"neg_pos_ratio must be >= 0, got {neg_pos_ratio!r}")
    if not 0.0 <= batch_hard_ratio <= 1.0:
        raise ValueError(f"batch_hard_ratio must be in [0, 1], got {batch_hard_ratio!r}")
    if min_negatives < 0:
        raise ValueError(f"min_negatives must be >= 0, got {min_negatives!r}")

    scores = loss_map.detach().reshape(-1).float()
    positive = (target.detach() >= pos_threshold).reshape(-1)
    num_pos = int(positive.sum())
    num_available = positive.numel() - num_pos
    wanted = math.ceil(neg_pos_ratio * num_pos - 1e-6)  # tolerate float error in e.g. 0.1 * 30
    num_neg = min(max(wanted, int(min_negatives)), num_available)
    num_hard = min(round(batch_hard_ratio * num_neg), num_neg)

    keep = positive.clone()
    if num_hard > 0:
        hard = scores.masked_fill(positive, -math.inf).topk(num_hard).indices
        keep[hard] = True
    num_random = num_neg - num_hard
    if num_random > 0:
        remaining = (~keep).nonzero().squeeze(1)
        device = generator.device if generator is not None else remaining.device
        order = torch.randperm(remaining.numel(), generator=generator, device=device)[:num_random]
        keep[remaining[order.to(remaining.device)]] = True
    return keep.view(loss_map.shape)


def soft_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float | None = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Per-voxel focal loss for soft targets: ``w_alpha(t) * |t - p| ** gamma * BCE(p, t)``.

    Args:
        logits: (B, 1, D, H, W) logits.
        target: (B, 1, D, H, W) targets in [0, 1].
        alpha: positive-class balance (``None``: no balancing). Default 0.25.
        gamma: focusing exponent. Default 2.0.

    Returns:
        (B, 1, D, H, W) loss map (float32).
    """
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = (target - torch.sigmoid(logits)).abs().pow(gamma) * bce if gamma else bce
    if alpha is not None:
        loss = loss * (alpha * target + (1.0 - alpha) * (1.0 - target))
    return loss


class _SoftFocal(nn.Module):
    def __init__(self, alpha: float | None, gamma: float) -> None:
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_focal_loss(logits, target, self.alpha, self.gamma)


class HeatmapLoss(nn.Module):
    """Focal or dice loss on heatmap logits, with optional hard-negative selection.

    * ``"focal"``: :func:`soft_focal_loss`, summed over all voxels (or over the kept voxels when hard-negative
      selection is on) and divided by the target mass ``max(1, sum(t))``.
    * ``"dice"``: ``monai.losses.DiceLoss(sigmoid=True, squared_pred, smooth_nr=smooth, smooth_dr=smooth, batch)``.
      With ``batch=True`` (default) intersection and union are summed over the batch, so patches without a nodule
      do not each contribute a full dice term.

    Hard-negative selection (``neg_pos_ratio`` not ``None``) keeps positives plus the negatives chosen by
    :func:`select_hard_negatives`, scored by the per-voxel focal loss (focal) or the predicted probability (dice).
    It can be switched at run time through :attr:`hard_negative_enabled`.

    Args:
        loss_type: ``"focal"`` or ``"dice"``. Defaults to ``"focal"``.
        alpha: focal alpha (weight of positives), ``None`` for none. Defaults to 0.25.
        gamma: focal gamma. Defaults to 2.0.
        smooth: dice numerator and denominator smoothing. Defaults to 1e-5.
        squared_pred: dice with squared terms in the denominator. Defaults to True.
        batch: dice over the whole batch. Defaults to True.
        neg_pos_ratio: negatives per positive voxel; ``None`` disables hard-negative selection. Defaults to None.
        batch_hard_ratio: fraction of the selected negatives that are the hardest. Defaults to 0.5.
        pos_threshold: target value from which a voxel is positive. Defaults to 0.5.
        min_negatives: smallest number of negatives kept per batch. Defaults to 64.
        seed: seed of the generator for random negatives; ``None`` uses the global generator.
        config_key: config key named in error messages. Defaults to ``"training.loss.detection"``.

    Raises:
        ValueError: on an unknown ``loss_type``.
    """

    def __init__(
        self,
        loss_type: str = "focal",
        alpha: float | None = 0.25,
        gamma: float = 2.0,
        smooth: float = 1e-5,
        squared_pred: bool = True,
        batch: bool = True,
        neg_pos_ratio: float | None = None,
        batch_hard_ratio: float = 0.5,
        pos_threshold: float = 0.5,
        min_negatives: int = 64,
        seed: int | None = None,
        config_key: str = "training.loss.detection",
    ) -> None:
        super().__init__()
        if loss_type not in HEATMAP_LOSS_TYPES:
            raise ValueError(f"{config_key}.type must be one of {list(HEATMAP_LOSS_TYPES)}, got {loss_type!r}")
        self.loss_type = loss_type
        self.loss: nn.Module
        if loss_type == "focal":
            self.loss = _SoftFocal(alpha=alpha, gamma=gamma)
        else:
            self.loss = DiceLoss(
                sigmoid=True, squared_pred=squared_pred, smooth_nr=smooth, smooth_dr=smooth, batch=batch
            )
        self.hard_negative_enabled = neg_pos_ratio is not None
        self.neg_pos_ratio = 3.0 if neg_pos_ratio is None else float(neg_pos_ratio)
        self.batch_hard_ratio = float(batch_hard_ratio)
        self.pos_threshold = float(pos_threshold)
        self.min_negatives = int(min_negatives)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.last_keep: torch.Tensor | None = None
        """(B, 1, D, H, W) bool mask of the voxels used by the last call (``None`` without selection)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the heatmap loss.

        Args:
            logits: (B, 1, D, H, W) heatmap logits (any float dtype; computed in float32).
            target: (B, 1, D, H, W) heatmap target in [0, 1].

        Returns:
            scalar loss.

        Raises:
            ValueError: if the shapes differ.
        """
        if logits.shape != target.shape:
            raise ValueError(
                f"heatmap prediction and target shapes differ: {list(logits.shape)} vs "
                f"{list(target.shape)}; resample the target to the prediction grid"
            )
        logits, target = logits.float(), target.float()
        self.last_keep = None
        if self.loss_type == "focal":
            loss_map = self.loss(logits, target)
            if not self.hard_negative_enabled:
                return loss_map.sum() / target.sum().clamp_min(1.0)
            keep = self._select(loss_map, target)
            return (loss_map * keep).sum() / (target * keep).sum().clamp_min(1.0)
        if not self.hard_negative_enabled:
            return self.loss(logits, target)
        keep = self._select(torch.sigmoid(logits), target)
        return self.loss(logits.masked_fill(~keep, _MASKED_LOGIT), target * keep)

    def _select(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = select_hard_negatives(
            scores,
            target,
            self.neg_pos_ratio,
            self.batch_hard_ratio,
            generator=self.generator,
            pos_threshold=self.pos_threshold,
            min_negatives=self.min_negatives,
        )
        self.last_keep = keep
        return keep
