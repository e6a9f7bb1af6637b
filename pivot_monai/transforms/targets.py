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

__all__ = ["TARGET_KEYS", "NoduleTargetsd", "RecordInstanceVolumesd", "gaussian_heatmap", "instance_stats"]

TARGET_KEYS: tuple[str, ...] = ("heatmap", "diameter", "malignancy", "mask", "malignancy_mask")
"""Keys of the training targets, shared by the batch preparation and the multi-task loss."""


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def instance_stats(label: np.ndarray) -> dict[int, tuple[np.ndarray, int]]:
    """``{instance id: (centroid (3,) in voxels, voxel count)}`` of a ``(X, Y, Z)`` integer label."""
    ids, coords, counts = _instance_voxels(label)[2:]
    return {int(i): (c, int(n)) for i, c, n in zip(ids, coords, counts)}


def _instance_voxels(label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(flat indices of labelled voxels, their instance ids, instance ids (K,), centroids (K, 3), voxel counts (K,))``
    of an integer label.

    Works on the labelled voxels only (a few hundred in a training patch of ~200 000) with ``np.bincount``, where
    ``np.unique`` + ``ndimage.center_of_mass`` sort and weigh the whole patch: this runs for every training crop in
    the data-loader worker, which shares the CPU with the training step.
    """
    flat = np.flatnonzero(label.ravel() > 0)
    values = label.ravel()[flat].astype(np.int64)
    counts = np.bincount(values)
    ids = np.flatnonzero(counts)
    if ids.size == 0:
        return flat, values, ids, np.zeros((0, 3)), counts[:0]
    position = np.stack(np.unravel_index(flat, label.shape), axis=1).astype(np.float64)
    sums = np.stack([np.bincount(values, weights=position[:, a], minlength=len(counts)) for a in range(3)], axis=1)
    return flat, values, ids, sums[ids] / counts[ids, None], counts[ids]


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
        # only the labelled voxels are counted (the background count is not used): cheaper on every training crop
        counts = np.bincount(label[label > 0].astype(np.int64), minlength=self.max_instances + 1)
        d["instance_volumes"] = counts[: self.max_instances + 1].astype(np.float32)
        return d


class NoduleTargetsd(MapTransform):
    """Build ``heatmap``, ``diameter``, ``malignancy``, ``mask`` and ``malignancy_mask`` from the instance label.

    Args:
        label_key: key of the (1, X, Y, Z) instance label. Default ``"label"``.
        spacing: voxel size in mm of the processed data (isotropic or not).
        sigma_scale: heatmap Gaussian sigma as a fraction of the nodule radius. Default 0.5. ``0`` gives every
            nodule the same Gaussian (``min_sigma_vox``): the focal loss is normalised by the target mass, so with
            size-scaled Gaussians a 20 mm nodule outweighs a 4 mm one about 30-fold, and a fixed sigma weighs each
            nodule equally.
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
        if sigma_scale < 0 or min_sigma_vox <= 0:
            raise ValueError(
                f"data.heatmap: sigma_scale must be >= 0 and min_sigma_voxels > 0, got {sigma_scale}, {min_sigma_vox}"
            )
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
        flat, instance, ids, centroids, counts = _instance_voxels(label)
        # per-instance values, indexed by instance id, then written to the labelled voxels in one step
        per_diameter = np.zeros(int(ids.max(initial=0)) + 1, dtype=np.float32)
        per_malignancy, per_rated = np.zeros_like(per_diameter), np.zeros_like(per_diameter)
        sigmas = []
        for i, count in zip(ids.tolist(), counts.tolist()):
            d_mm = float(diameters[i]) if i < len(diameters) and diameters[i] > 0 else self._equivalent_diameter(count)
            if volumes is not None and i < len(volumes) and volumes[i] > 0:
                d_mm *= float(count / volumes[i]) ** (1.0 / 3.0)
            per_diameter[i] = d_mm
            if i < len(malignancy) and malignancy[i] >= 0:
                per_malignancy[i], per_rated[i] = malignancy[i], 1.0
            sigmas.append(np.maximum(self.sigma_scale * (d_mm / 2.0) / self.spacing, self.min_sigma_vox))
        maps = {}
        for key, values in (
            ("diameter", per_diameter),
            ("malignancy", per_malignancy),
            ("mask", np.ones_like(per_diameter)),
            ("malignancy_mask", per_rated),
        ):
            arr = np.zeros(shape, dtype=np.float32)
            arr.ravel()[flat] = values[instance]
            maps[key] = arr
        heat = gaussian_heatmap(shape, centroids, np.asarray(sigmas).reshape(-1, 3))
        for key, arr in {"heatmap": heat, **maps}.items():
            d[key] = torch.as_tensor(arr[None])
        return d

    def _equivalent_diameter(self, count: int) -> float:
        return float((6.0 * count * np.prod(self.spacing) / np.pi) ** (1.0 / 3.0))
