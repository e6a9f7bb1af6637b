"""Peak decoding: heatmap -> nodule candidates (voxel and world coordinates, score, diameter, malignancy).

Steps (each configurable): 3D max-pool NMS on the heatmap, a score threshold, sub-voxel refinement (a
log-parabola through each peak and its neighbours, exact for Gaussian peaks), merging of candidates closer than the
larger one's radius (the lower score is dropped) and a cap of ``max_candidates`` per scan (LUNA16 scores at most
100).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from scipy import ndimage

__all__ = ["DecodeSettings", "candidates_to_world", "decode_peaks", "output_to_input_index"]


@dataclass
class DecodeSettings:
    """Peak-decoding settings (the ``inference`` section of the config).

    Args:
        score_threshold: minimum heatmap probability of a candidate. Default 0.05.
        nms_kernel: max-pool window (voxels, odd). Default 3.
        max_candidates: candidates kept per scan. Default 100.
        merge_radius: merge candidates closer than the larger predicted radius. Default True.
        min_merge_mm: smallest merge distance in mm. Default 3.0.
        refine: sub-voxel peak refinement. Default True.
    """

    score_threshold: float = 0.05
    nms_kernel: int = 3
    max_candidates: int = 100
    merge_radius: bool = True
    min_merge_mm: float = 3.0
    refine: bool = True

    def __post_init__(self) -> None:
        if self.nms_kernel < 1 or self.nms_kernel % 2 == 0:
            raise ValueError(f"inference.nms_kernel must be a positive odd number of voxels, got {self.nms_kernel}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise ValueError(f"inference.score_threshold must be in [0, 1), got {self.score_threshold}")
        if self.max_candidates < 1:
            raise ValueError(f"inference.max_candidates must be >= 1, got {self.max_candidates}")

    @classmethod
    def from_config(cls, inference: Mapping[str, Any] | None) -> DecodeSettings:
        """Settings from the ``inference`` config section (keys not about decoding are ignored)."""
        inference = inference or {}
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in inference.items() if k in names})


def _spatial(x: torch.Tensor) -> torch.Tensor:
    while x.dim() > 3:
        x = x[0]
    return x


def decode_peaks(
    heatmap: torch.Tensor,
    diameter: torch.Tensor | None = None,
    malignancy: torch.Tensor | None = None,
    settings: DecodeSettings | None = None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> dict[str, np.ndarray]:
    """Decode candidates from one scan's maps.

    Args:
        heatmap: (X, Y, Z) or (1, X, Y, Z) nodule probability.
        diameter: same shape, predicted diameter in mm (optional).
        malignancy: same shape, malignancy probability (optional).
        settings: decoding settings.
        spacing: voxel size of the maps in mm (for merging).

    Returns:
        ``{"index": (K, 3) float voxel indices in the map grid, "score": (K,), "diameter_mm": (K,),
        "malignancy": (K,)}`` sorted by score, ``K <= max_candidates``.
    """
    s = settings or DecodeSettings()
    heat = _spatial(heatmap).float()
    # scipy's separable maximum filter: the same local maxima as a stride-1 max_pool3d, 5x faster on CPU
    pooled = ndimage.maximum_filter(heat.numpy(), size=s.nms_kernel, mode="constant", cval=-np.inf)
    peaks = (heat == torch.from_numpy(pooled)) & (heat >= s.score_threshold)
    idx = torch.nonzero(peaks, as_tuple=False)
    scores = heat[peaks]
    order = torch.argsort(scores, descending=True)[: 4 * s.max_candidates]
    idx, scores = idx[order], scores[order]
    shape = torch.tensor(heat.shape)
    diam = _spatial(diameter).float()[tuple(idx.T)] if diameter is not None else torch.zeros_like(scores)
    malig = _spatial(malignancy).float()[tuple(idx.T)] if malignancy is not None else torch.zeros_like(scores)
    pos = idx.double()
    if s.refine and len(idx):
        pos = _refine(heat, idx, shape)
    keep = _merge(pos.numpy(), diam.numpy(), np.asarray(spacing, float), s) if s.merge_radius else np.arange(len(idx))
    keep = keep[: s.max_candidates]
    return {
        "index": pos.numpy()[keep].reshape(-1, 3),
        "score": scores.numpy()[keep],
        "diameter_mm": diam.numpy()[keep],
        "malignancy": malig.numpy()[keep],
    }


def _refine(heat: torch.Tensor, idx: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Sub-voxel peak position: a parabola through the log-heatmap at each peak and its two neighbours, per axis.

    Exact for a Gaussian peak; offsets are clamped to half a voxel and left at 0 on the borders.
    """
    pos = idx.double().clone()
    centre = torch.log(heat[tuple(idx.T)].double().clamp_min(1e-12))
    for axis in range(3):
        lo, hi = idx.clone(), idx.clone()
        lo[:, axis] -= 1
        hi[:, axis] += 1
        inside = (lo[:, axis] >= 0) & (hi[:, axis] < shape[axis])
        lo[:, axis].clamp_(min=0)
        hi[:, axis].clamp_(max=int(shape[axis]) - 1)
        a = torch.log(heat[tuple(lo.T)].double().clamp_min(1e-12))
        b = torch.log(heat[tuple(hi.T)].double().clamp_min(1e-12))
        curvature = a - 2 * centre + b
        offset = torch.where(curvature < -1e-12, 0.5 * (a - b) / curvature, torch.zeros_like(a))
        pos[:, axis] += torch.where(inside, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))
    return pos


def _merge(pos: np.ndarray, diam: np.ndarray, spacing: np.ndarray, s: DecodeSettings) -> np.ndarray:
    """Indices kept after dropping candidates within the radius of a higher-scored one (input sorted by score)."""
    kept: list[int] = []
    mm = pos * spacing
    radius = np.maximum(diam / 2.0, s.min_merge_mm)
    for i in range(len(pos)):
        if kept:
            d = np.linalg.norm(mm[kept] - mm[i], axis=1)
            if np.any(d < np.maximum(radius[kept], radius[i])):
                continue
        kept.append(i)
        if len(kept) >= s.max_candidates:
            break
    return np.asarray(kept, dtype=int)


def output_to_input_index(index: np.ndarray, stride: int) -> np.ndarray:
    """Map voxel indices of a map at ``1/stride`` resolution to the input grid (centre of the covered block)."""
    return np.asarray(index, dtype=float) * stride + (stride - 1) / 2.0


def candidates_to_world(index: np.ndarray, index_to_world: np.ndarray) -> np.ndarray:
    """(K, 3) input-grid voxel indices -> (K, 3) world mm with a (4, 4) index-to-world matrix."""
    m = np.asarray(index_to_world, dtype=float)
    idx = np.asarray(index, dtype=float).reshape(-1, 3)
    return idx @ m[:3, :3].T + m[:3, 3]
