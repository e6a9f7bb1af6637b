"""The guide's ``augmentation`` section as MONAI transforms.

Spatial transforms move image and instance label together (bilinear / nearest), so the targets derived afterwards
(:class:`~pivot_monai.transforms.targets.NoduleTargetsd`) stay on the nodules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from monai.transforms import (
    Rand3DElasticd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSharpend,
    RandGaussianSmoothd,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandZoomd,
    Transform,
)

from pivot_monai.transforms.appearance import RandCorrelatedNoised, RandLesionContrastd

__all__ = ["AUGMENTATION_KEYS", "build_augmentation"]

AUGMENTATION_KEYS = (
    "enabled",
    "flip",
    "rotation",
    "scaling",
    "noise",
    "elastic",
    "lesion_contrast",
    "intensity",
    "smooth",
    "sharpen",
)


def _prob(cfg: Mapping[str, Any], name: str) -> float:
    p = float(cfg.get("prob", 0.0))
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augmentation.{name}.prob must be in [0, 1], got {p}")
    return p


def _pair(value: Any, name: str, positive: bool = True) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        value = (value, value)
    lo, hi = (float(v) for v in value)
    if lo > hi or (positive and lo <= 0):
        raise ValueError(f"augmentation.{name} must be [low, high] with 0 < low <= high, got {list(value)}")
    return lo, hi


def build_augmentation(
    cfg: Mapping[str, Any] | None, image_key: str = "image", label_key: str = "label"
) -> list[Transform]:
    """Transforms for the ``augmentation`` section; an empty list when ``enabled`` is false.

    Args:
        cfg: ``{"enabled", "flip": {prob, axes}, "rotation": {prob, max_angle (degrees)},
            "scaling": {prob, scale_range}, "noise": {prob, mean, std, sample_std, texture_sigma},
            "elastic": {prob, sigma_range, magnitude_range}, "lesion_contrast": {prob, factor_range},
            "intensity": {prob, shift, scale}, "smooth": {prob, sigma_range}, "sharpen": {prob, alpha_range}}``.
            A section with ``prob: 0`` adds nothing. The last three imitate other scanners (attenuation offsets and
            gains, soft and sharp reconstruction kernels): the image is the HU window scaled to [0, 1], so a
            ``shift`` of 0.03 is about 40 HU. ``noise.std`` is the largest standard deviation; each draw picks one
            in ``[0, std]`` (dose varies), or exactly ``std`` with ``noise.sample_std: false`` (the guide's
            ``noise_std``). ``noise.texture_sigma: [low, high]`` correlates the noise with a Gaussian of a width
            drawn in that range (voxels; CT grain: :class:`~pivot_monai.transforms.appearance.RandCorrelatedNoised`);
            absent or ``[0, 0]``, the noise is white. ``lesion_contrast`` scales each labelled nodule's contrast
            against the lung around it by a factor drawn per nodule (faint ground glass to dense solid), before the
            noise is added.
        image_key: image key (bilinear). label_key: instance label key (nearest).

    Raises:
        ValueError: unknown sub-section or out-of-range value, naming the ``augmentation.*`` key.
    """
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(AUGMENTATION_KEYS))
    if unknown:
        raise ValueError(f"augmentation: unknown key(s) {unknown}; valid: {list(AUGMENTATION_KEYS)}")
    if not cfg.get("enabled", True):
        return []
    keys, modes = [image_key, label_key], ["bilinear", "nearest"]
    out: list[Transform] = []
    flip = cfg.get("flip") or {}
    if _prob(flip, "flip") > 0:
        for axis in flip.get("axes", [0, 1, 2]):
            if axis not in (0, 1, 2):
                raise ValueError(f"augmentation.flip.axes must be spatial axes in 0..2, got {axis}")
            out.append(RandFlipd(keys, prob=flip["prob"], spatial_axis=axis))
    rot = cfg.get("rotation") or {}
    if _prob(rot, "rotation") > 0:
        angle = math.radians(float(rot.get("max_angle", 15.0)))
        out.append(
            RandRotated(
                keys,
                range_x=angle,
                range_y=angle,
                range_z=angle,
                prob=rot["prob"],
                mode=modes,
                padding_mode="zeros",
                keep_size=True,
            )
        )
    scale = cfg.get("scaling") or {}
    if _prob(scale, "scaling") > 0:
        lo, hi = _pair(scale.get("scale_range", (0.9, 1.1)), "scaling.scale_range")
        out.append(
            RandZoomd(
                keys,
                prob=scale["prob"],
                min_zoom=lo,
                max_zoom=hi,
                mode=["trilinear", "nearest"],
                keep_size=True,
                padding_mode="constant",
            )
        )
    elastic = cfg.get("elastic") or {}
    if _prob(elastic, "elastic") > 0:
        out.append(
            Rand3DElasticd(
                keys,
                sigma_range=_pair(elastic.get("sigma_range", (5, 7)), "elastic.sigma_range"),
                magnitude_range=_pair(elastic.get("magnitude_range", (50, 150)), "elastic.magnitude_range"),
                prob=elastic["prob"],
                mode=modes,
                padding_mode="zeros",
            )
        )
    lesion = cfg.get("lesion_contrast") or {}
    if _prob(lesion, "lesion_contrast") > 0:
        factors = _pair(lesion.get("factor_range", (0.5, 1.2)), "lesion_contrast.factor_range")
        out.append(RandLesionContrastd([image_key], label_key, prob=lesion["prob"], factor_range=factors))
    noise = cfg.get("noise") or {}
    if _prob(noise, "noise") > 0:
        out.append(_noise(noise, image_key))
    out += _scanner_augmentation(cfg, image_key)
    return out


def _noise(noise: Mapping[str, Any], image_key: str) -> Transform:
    """White (MONAI) or correlated noise for the ``noise`` section."""
    unknown = sorted(set(noise) - {"prob", "mean", "std", "sample_std", "texture_sigma"})
    if unknown:
        raise ValueError(
            f"augmentation.noise: unknown key(s) {unknown}; valid: prob, mean, std, sample_std, texture_sigma"
        )
    std = float(noise.get("std", 0.02))
    if std < 0:
        raise ValueError(f"augmentation.noise.std must be >= 0, got {std}")
    texture = noise.get("texture_sigma")
    if texture is not None:
        lo, hi = _pair(texture, "noise.texture_sigma", positive=False)
        if lo < 0:
            raise ValueError(f"augmentation.noise.texture_sigma must be [low, high] voxels >= 0, got {list(texture)}")
        if hi > 0:
            return RandCorrelatedNoised(
                [image_key],
                prob=noise["prob"],
                std=std,
                sigma_range=(lo, hi),
                mean=float(noise.get("mean", 0.0)),
                sample_std=bool(noise.get("sample_std", True)),
            )
    return RandGaussianNoised(
        [image_key],
        prob=noise["prob"],
        mean=float(noise.get("mean", 0.0)),
        std=std,
        sample_std=bool(noise.get("sample_std", True)),
    )


def _scanner_augmentation(cfg: Mapping[str, Any], image_key: str) -> list[Transform]:
    """Intensity offset/gain, kernel blur and kernel sharpening (image only)."""
    out: list[Transform] = []
    intensity = cfg.get("intensity") or {}
    if _prob(intensity, "intensity") > 0:
        shift = float(intensity.get("shift", 0.03))
        scale = float(intensity.get("scale", 0.05))
        if shift < 0 or scale < 0:
            raise ValueError(f"augmentation.intensity.shift and .scale must be >= 0, got {shift} and {scale}")
        out.append(RandShiftIntensityd([image_key], offsets=shift, prob=intensity["prob"]))
        out.append(RandScaleIntensityd([image_key], factors=scale, prob=intensity["prob"]))
    smooth = cfg.get("smooth") or {}
    if _prob(smooth, "smooth") > 0:
        lo, hi = _pair(smooth.get("sigma_range", (0.25, 0.75)), "smooth.sigma_range")
        out.append(
            RandGaussianSmoothd([image_key], sigma_x=(lo, hi), sigma_y=(lo, hi), sigma_z=(lo, hi), prob=smooth["prob"])
        )
    sharpen = cfg.get("sharpen") or {}
    if _prob(sharpen, "sharpen") > 0:
        lo, hi = _pair(sharpen.get("alpha_range", (1.0, 3.0)), "sharpen.alpha_range")
        out.append(
            RandGaussianSharpend(
                [image_key],
                sigma1_x=(0.4, 0.8), sigma1_y=(0.4, 0.8), sigma1_z=(0.4, 0.8),
                sigma2_x=0.4, sigma2_y=0.4, sigma2_z=0.4,
                alpha=(lo, hi), prob=sharpen["prob"],
            )
        )  # fmt: skip
    return out
