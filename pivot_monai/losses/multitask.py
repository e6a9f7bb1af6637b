"""Multi-task detection loss: heatmap + diameter + malignancy, built from the ``loss`` config section.

Example config section (every key optional; these are the defaults)::

    loss:
      detection: {type: focal, alpha: 0.25, gamma: 2.0, smooth: 1.0e-5, squared_pred: true, batch: true}
      regression: {type: smooth_l1, beta: 1.0, scale_mm: 10.0}
      classification: {type: bce, pos_weight: 1.0}
      weights: {detection: 1.0, regression: 0.1, classification: 0.1}
      hard_negative: {enabled: false, neg_pos_ratio: 3.0, batch_hard_ratio: 0.5, pos_threshold: 0.5,
                      min_negatives: 64, seed: null}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pivot_monai.losses.detection import HeatmapLoss
from pivot_monai.losses.masked import MaskedBCEWithLogitsLoss, MaskedSmoothL1Loss
from pivot_monai.transforms.targets import TARGET_KEYS

__all__ = ["LOSS_DEFAULTS", "TARGET_KEYS", "MultiTaskDetectionLoss", "build_loss", "downsample_targets"]

logger = logging.getLogger(__name__)

"""Target keys read by :class:`MultiTaskDetectionLoss` (and resampled by :func:`downsample_targets`)."""

LOSS_DEFAULTS: dict[str, dict[str, Any]] = {
    "detection": {"type": "focal", "alpha": 0.25, "gamma": 2.0, "smooth": 1e-5, "squared_pred": True, "batch": True},
    "regression": {"type": "smooth_l1", "beta": 1.0, "scale_mm": 10.0},
    "classification": {"type": "bce", "pos_weight": 1.0},
    "weights": {"detection": 1.0, "regression": 0.1, "classification": 0.1},
    "hard_negative": {
        "enabled": False,
        "neg_pos_ratio": 3.0,
        "batch_hard_ratio": 0.5,
        "pos_threshold": 0.5,
        "min_negatives": 64,
        "seed": None,
    },
}
"""Default of every loss config key; a section given by the user is merged over these."""

_TYPES = {"regression": ("smooth_l1",), "classification": ("bce",)}
_MASK_THRESHOLD = 0.5


def downsample_targets(target: Mapping[str, Any], spatial_shape: Sequence[int]) -> dict[str, Any]:
    """Max-pool the dense targets onto a coarser prediction grid (for ``output_stride > 1``).

    Max pooling, rather than strided sampling or average pooling, keeps each heatmap peak at 1 in the coarse cell that
    holds the nodule centre and keeps nodules smaller than one coarse cell in the mask, together with their diameter
    and malignancy. Keys other than :data:`TARGET_KEYS`, and targets already on ``spatial_shape``, are returned
    unchanged.

    Args:
        target: dict with (B, 1, D, H, W) tensors under :data:`TARGET_KEYS` (any subset; bool or numeric dtypes).
        spatial_shape: (D/s, H/s, W/s) spatial shape of the prediction; each target size must be an integer multiple.

    Returns:
        a new dict with the resampled tensors, each in its original dtype.

    Raises:
        ValueError: if a target size is not an integer multiple of ``spatial_shape``.
    """
    shape = tuple(int(s) for s in spatial_shape)
    out = dict(target)
    for key in TARGET_KEYS:
        value = target.get(key)
        if not isinstance(value, torch.Tensor) or tuple(value.shape[2:]) == shape:
            continue
        source = tuple(value.shape[2:])
        if len(source) != len(shape) or any(s % p or s < p for s, p in zip(source, shape)):
            raise ValueError(
                f"target[{key!r}] spatial shape {list(source)} is not an integer multiple of the prediction shape "
                f"{list(shape)}; targets must be at the input resolution and predictions at 1/output_stride of it"
            )
        factors = tuple(s // p for s, p in zip(source, shape))
        pool = F.max_pool3d if len(shape) == 3 else F.max_pool2d
        out[key] = pool(value.float(), kernel_size=factors, stride=factors).to(value.dtype)
    return out


class MultiTaskDetectionLoss(nn.Module):
    """Weighted sum of the heatmap, diameter and malignancy losses.

    ``total = w_det * detection + w_reg * regression + w_cls * classification`` with

    * detection: :class:`~pivot_monai.losses.detection.HeatmapLoss` (``"focal"`` or ``"dice"``) on heatmap logits,
      optionally with hard-negative selection (``hard_negative.enabled``);
    * regression: :class:`~pivot_monai.losses.masked.MaskedSmoothL1Loss` on the diameter (mm) at nodule voxels;
    * classification: :class:`~pivot_monai.losses.masked.MaskedBCEWithLogitsLoss` on malignancy logits at nodule
      voxels.

    Nodule voxels are ``target["mask"] > 0.5``. Predictions must be the detector's **train-mode logits**. If the
    predictions are coarser than the targets (``output_stride > 1``) the targets are max-pooled onto the prediction
    grid by :func:`downsample_targets`. A component whose weight is 0 is not computed (and its keys are not needed).
    After each call :attr:`last_components` holds detached scalar tensors ``detection``, ``regression``,
    ``classification`` and ``total`` for logging (``float(t)`` converts them).

    Args:
        detection: ``type`` (``"focal"`` | ``"dice"``), ``alpha``, ``gamma``, ``smooth``, ``squared_pred``, ``batch``.
        regression: ``type`` (``"smooth_l1"``), ``beta``, ``scale_mm``.
        classification: ``type`` (``"bce"``), ``pos_weight``.
        weights: ``detection``, ``regression``, ``classification`` (each >= 0).
        hard_negative: ``enabled``, ``neg_pos_ratio``, ``batch_hard_ratio``, ``pos_threshold``, ``min_negatives``,
            ``seed`` (see :func:`~pivot_monai.losses.detection.select_hard_negatives`).
        config_key: config key of this section, named in error messages. Defaults to ``"training.loss"``.

    Every section is merged over :data:`LOSS_DEFAULTS`.

    Raises:
        ValueError: on an unknown key or ``type``, or a negative weight.

    Example:
        >>> loss_fn = MultiTaskDetectionLoss(detection={"type": "dice"}, weights={"classification": 0.0})
        >>> pred = {k: torch.zeros(1, 1, 8, 8, 8) for k in ("heatmap", "diameter", "malignancy")}
        >>> target = {k: torch.zeros(1, 1, 8, 8, 8) for k in ("heatmap", "diameter", "malignancy", "mask")}
        >>> total = loss_fn(pred, target)
        >>> sorted(loss_fn.last_components)
        ['classification', 'detection', 'regression', 'total']
    """

    def __init__(
        self,
        detection: Mapping[str, Any] | None = None,
        regression: Mapping[str, Any] | None = None,
        classification: Mapping[str, Any] | None = None,
        weights: Mapping[str, float] | None = None,
        hard_negative: Mapping[str, Any] | None = None,
        config_key: str = "training.loss",
    ) -> None:
        super().__init__()
        det = _merge(config_key, "detection", detection)
        reg = _merge(config_key, "regression", regression)
        cls = _merge(config_key, "classification", classification)
        hard = _merge(config_key, "hard_negative", hard_negative)
        self.weights = {k: float(v) for k, v in _merge(config_key, "weights", weights).items()}
        for name, value in self.weights.items():
            if value < 0:
                raise ValueError(f"{config_key}.weights.{name} must be >= 0, got {value!r}")
        for section, cfg in (("regression", reg), ("classification", cls)):
            if cfg["type"] not in _TYPES[section]:
                raise ValueError(
                    f"{config_key}.{section}.type must be one of {list(_TYPES[section])}, got {cfg['type']!r}"
                )

        self.detection_loss = HeatmapLoss(
            loss_type=det["type"],
            alpha=det["alpha"],
            gamma=det["gamma"],
            smooth=det["smooth"],
            squared_pred=det["squared_pred"],
            batch=det["batch"],
            neg_pos_ratio=hard["neg_pos_ratio"] if hard["enabled"] else None,
            batch_hard_ratio=hard["batch_hard_ratio"],
            pos_threshold=hard["pos_threshold"],
            min_negatives=hard["min_negatives"],
            seed=hard["seed"],
            config_key=f"{config_key}.detection",
        )
        self.regression_loss = MaskedSmoothL1Loss(beta=reg["beta"], scale_mm=reg["scale_mm"])
        self.classification_loss = MaskedBCEWithLogitsLoss(pos_weight=cls["pos_weight"])
        self.last_components: dict[str, torch.Tensor] = {}

    @property
    def hard_negative_enabled(self) -> bool:
        """Whether hard-negative selection is on; settable at run time (e.g. by a mining handler)."""
        return self.detection_loss.hard_negative_enabled

    @hard_negative_enabled.setter
    def hard_negative_enabled(self, value: bool) -> None:
        self.detection_loss.hard_negative_enabled = bool(value)

    def forward(self, pred: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Compute the total loss and record the components in :attr:`last_components`.

        Args:
            pred: detector output in train mode: ``"heatmap"`` (B, 1, d, h, w) logits, ``"diameter"`` (B, 1, d, h, w)
                mm, ``"malignancy"`` (B, 1, d, h, w) logits, with ``(d, h, w) = (D, H, W) / output_stride``.
            target: ``"heatmap"`` (B, 1, D, H, W) in [0, 1], ``"diameter"`` (B, 1, D, H, W) mm, ``"malignancy"``
                (B, 1, D, H, W) in {0, 1}, ``"mask"`` (B, 1, D, H, W) nodule voxels (bool or {0, 1}), optionally
                ``"malignancy_mask"`` (nodule voxels with a malignancy rating; default ``"mask"``).

        Returns:
            scalar total loss.

        Raises:
            ValueError: if a needed key is missing or the shapes are incompatible.
        """
        use_reg, use_cls = self.weights["regression"] > 0, self.weights["classification"] > 0
        _require(pred, ["heatmap"] + ["diameter"] * use_reg + ["malignancy"] * use_cls, "pred")
        _require(target, ["heatmap"] + ["diameter", "mask"] * use_reg + ["malignancy", "mask"] * use_cls, "target")
        heatmap = pred["heatmap"]
        target = downsample_targets(target, heatmap.shape[2:])

        detection = self.detection_loss(heatmap, target["heatmap"])
        zero = heatmap.new_zeros((), dtype=torch.float32)
        regression, classification = zero, zero
        if use_reg or use_cls:
            mask = target["mask"] > _MASK_THRESHOLD
            if use_reg:
                regression = self.regression_loss(pred["diameter"], target["diameter"], mask)
            if use_cls:
                # nodules without a malignancy rating are left out of the triage loss when the targets say so
                cls_mask = target["malignancy_mask"] > _MASK_THRESHOLD if "malignancy_mask" in target else mask
                classification = self.classification_loss(pred["malignancy"], target["malignancy"], cls_mask)
        total = (
            self.weights["detection"] * detection
            + self.weights["regression"] * regression
            + self.weights["classification"] * classification
        )
        self.last_components = {
            "detection": detection.detach(),
            "regression": regression.detach(),
            "classification": classification.detach(),
            "total": total.detach(),
        }
        return total


def build_loss(loss_cfg: Mapping[str, Any] | None = None, config_key: str = "training.loss") -> MultiTaskDetectionLoss:
    """Build :class:`MultiTaskDetectionLoss` from a ``loss`` config section.

    Args:
        loss_cfg: mapping with any of ``detection``, ``regression``, ``classification``, ``weights``,
            ``hard_negative`` (see :data:`LOSS_DEFAULTS`); ``None`` for all defaults.
        config_key: config key of the section, named in error messages. Defaults to ``"training.loss"``.

    Returns:
        the loss module.

    Raises:
        ValueError: on an unknown section, key or type.
    """
    cfg = dict(loss_cfg or {})
    unknown = sorted(set(cfg) - set(LOSS_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown key(s) {[f'{config_key}.{k}' for k in unknown]}; valid keys: {sorted(LOSS_DEFAULTS)}"
        )
    return MultiTaskDetectionLoss(**cfg, config_key=config_key)


def _merge(config_key: str, section: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    defaults = LOSS_DEFAULTS[section]
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown key(s) {[f'{config_key}.{section}.{k}' for k in unknown]}; valid keys: {sorted(defaults)}"
        )
    return {**defaults, **given}


def _require(mapping: Mapping[str, Any], keys: list[str], name: str) -> None:
    missing = sorted({k for k in keys if k not in mapping})
    if missing:
        raise ValueError(f"{name} is missing key(s) {missing} needed by the multi-task loss; got {sorted(mapping)}")
