"""Training targets derived from the (augmented) nodule instance label: heatmap, diameter and malignancy maps.

Targets are derived *after* spatial augmentation, from the label that was transformed together with the image,
so they stay on the nodule whatever flip, rotation, scaling or elastic deformation was applied. The diameter is the
annotated diameter scaled by the cube root of the instance's voxel-count change (``RecordInstanceVolumesd`` stores
the count before augmentation), which tracks scaling augmentation without knowing its parameters.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage

__all__ = ["TARGET_KEYS", "NoduleTargetsd", "RecordInstanceVolumesd", "gaussian_heatmap", "instance_stats"]

TARGET_KEYS: tuple[str, ...] = ("heatmap", "diameter", "malignancy", "mask", "malignancy_mask")
"""Keys of the training targets, shared by the batch preparation and the multi-task loss."""


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def instance_stats(label: np.ndarray) -> dict[int, tuple[np.ndarray, int]]:
    """``{instance id: (centroid (3,) in voxels, voxel count)}`` of a ``(X, Y, Z)`` integer label."""
    ids = np.unique(label)
    ids = ids[ids > 0].astype(int)
    if ids.size == 0:
        return {}
    counts = ndimage.sum_labels(np.ones_like(label, dtype=np.float64), label, index=ids)
    centroids = ndimage.center_of_mass(np.ones_like(label, dtype=np.float64), label, index=ids)
    return {int(i): (np.asarray(c), int(n)) for i, c, n in zip(ids, centroids, counts)}


def gaussian_heatmap(shape: Sequence[int], centres: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` float32 map, the max over unit-peak Gaussians (centres ``(N, 3)``, sigmas ``(N,)`` or ``(N, 3)``
    in voxels), each cut at 3 sigma."""
    heat = np.zeros(tuple(shape), dtype=np.float32)
    centres = np.asarray(centres, dtype=float).reshape(-1, 3)
    if len(centres) == 0:
        return heat
    sigmas = np.broadcast_to(np.asarray(sigmas, dtype=float).reshape(len(centres), -1), (len(centres), 3))
    for c, s in zip(centres, sigmas):
        lo = np.maximum(np.floor(c - 3 * s).astype(int), 0)
        hi = np.minimum(np.ceil(c + 3 * s).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        axes = [np.exp(-0.5 * ((np.arange(a, b) - ci) / si) ** 2) for a, b, ci, si in zip(lo, hi, c, s)]
        g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
        sub = heat[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        np.maximum(sub, g.astype(np.float32), out=sub)
    return heat


class RecordInstanceVolumesd(MapTransform):
    """Store the voxel count of every instance in ``label_key`` under ``"instance_volumes"`` (before augmentation)."""

    def __init__(self, label_key: str = "label", max_instances: int = 64) -> None:
        super().__init__([label_key])
        self.label_key, self.max_instances = label_key, max_instances

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label = _as_numpy(d[self.label_key])[0]
        counts = np.bincount(label.astype(np.int64).ravel(), minlength=self.max_instances + 1)
        d["instance_volumes"] = counts[: self.max_instances + 1].astype(np.float32)
        return d


class NoduleTargetsd(MapTransform):
    """Build ``heatmap``, ``diameter``, ``malignancy``, ``mask`` and ``malignancy_mask`` from the instance label.

    Args:
        label_key: key of the (1, X, Y, Z) instance label. Default ``"label"``.
        spacing: voxel size in mm of the processed data (isotropic or not).
        sigma_scale: heatmap Gaussian sigma as a fraction of the nodule radius. Default 0.5.
        min_sigma_vox: smallest sigma in voxels. Default 1.0.

    Every output is ``(1, X, Y, Z)`` float32. ``diameter`` (mm) and ``malignancy`` (0/1) are set on nodule voxels
    (``mask``); ``malignancy_mask`` excludes nodules without a rating. Uses ``nodule_diameters`` /
    ``nodule_malignancy`` (from :class:`~pivot_monai.transforms.nodules.LoadNoduleMetad`) and, when present,
    ``instance_volumes`` (from :class:`RecordInstanceVolumesd`).
    """

    def __init__(
        self,
        label_key: str = "label",
        spacing: Sequence[float] = (1.5, 1.5, 1.5),
        sigma_scale: float = 0.5,
        min_sigma_vox: float = 1.0,
    ) -> None:
        super().__init__([label_key])
        if sigma_scale <= 0 or min_sigma_vox <= 0:
            raise ValueError(f"sigma_scale and min_sigma_vox must be > 0, got {sigma_scale}, {min_sigma_vox}")
        self.label_key = label_key
        self.spacing = np.asarray(spacing, dtype=float)
        self.sigma_scale, self.min_sigma_vox = sigma_scale, min_sigma_vox

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label = np.rint(_as_numpy(d[self.label_key])[0]).astype(np.int32)
        diameters = np.asarray(d.get("nodule_diameters", np.zeros(1)), dtype=np.float32)
        malignancy = np.asarray(d.get("nodule_malignancy", np.full(1, -1.0)), dtype=np.float32)
        volumes = d.get("instance_volumes")
        shape = label.shape
        diam_map = np.zeros(shape, dtype=np.float32)
        malig_map = np.zeros(shape, dtype=np.float32)
        malig_mask = np.zeros(shape, dtype=np.float32)
        centres, sigmas = [], []
        for i, (centroid, count) in instance_stats(label).items():
            d_mm = float(diameters[i]) if i < len(diameters) and diameters[i] > 0 else self._equivalent_diameter(count)
            if volumes is not None and i < len(volumes) and volumes[i] > 0:
                d_mm *= float(count / volumes[i]) ** (1.0 / 3.0)
            voxels = label == i
            diam_map[voxels] = d_mm
            if i < len(malignancy) and malignancy[i] >= 0:
                malig_map[voxels] = malignancy[i]
                malig_mask[voxels] = 1.0
            centres.append(centroid)
            sigmas.append(np.maximum(self.sigma_scale * (d_mm / 2.0) / self.spacing, self.min_sigma_vox))
        heat = gaussian_heatmap(shape, np.asarray(centres).reshape(-1, 3), np.asarray(sigmas).reshape(-1, 3))
        for key, arr in (
            ("heatmap", heat),
            ("diameter", diam_map),
            ("malignancy", malig_map),
            ("mask", (label > 0).astype(np.float32)),
            ("malignancy_mask", malig_mask),
        ):
            d[key] = torch.as_tensor(arr[None])
        return d

    def _equivalent_diameter(self, count: int) -> float:
        return float((6.0 * count * np.prod(self.spacing) / np.pi) ** (1.0 / 3.0))
