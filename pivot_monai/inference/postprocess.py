"""Evaluator/inference post-processing: decode candidates from the predicted maps, in world millimetres."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from pivot_monai.inference.decode import DecodeSettings, candidates_to_world, decode_peaks, output_to_input_index
from pivot_monai.metrics.cumulative import SCAN_STATS
from pivot_monai.metrics.detection import detection_dice

__all__ = ["DecodeCandidatesd", "candidate_table", "sphere_mask"]


def candidate_table(decoded: Mapping[str, np.ndarray], world: np.ndarray, size: int) -> torch.Tensor:
    """``(size, 6)`` candidate table (rows ``[x, y, z, p, diameter, malignancy]``, padding rows have ``p = -1``)."""
    table = np.zeros((size, 6), dtype=np.float32)
    table[:, 3] = -1.0
    k = min(len(decoded["score"]), size)
    table[:k, :3] = world[:k]
    table[:k, 3] = decoded["score"][:k]
    table[:k, 4] = decoded["diameter_mm"][:k]
    table[:k, 5] = decoded["malignancy"][:k]
    return torch.as_tensor(table)


def sphere_mask(shape: Sequence[int], centres: np.ndarray, diameters_mm: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Boolean ``shape`` volume with a sphere per centre (voxel indices) of the given diameter (mm)."""
    mask = np.zeros(tuple(shape), dtype=bool)
    for c, d in zip(np.atleast_2d(centres), np.atleast_1d(diameters_mm)):
        r = max(float(d) / 2.0, 0.5 * float(np.min(spacing)))
        lo = np.maximum(np.floor(c - r / spacing).astype(int), 0)
        hi = np.minimum(np.ceil(c + r / spacing).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        grid = np.meshgrid(*[(np.arange(a, b) - ci) * s for a, b, ci, s in zip(lo, hi, c, spacing)], indexing="ij")
        mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] |= (grid[0] ** 2 + grid[1] ** 2 + grid[2] ** 2) <= r * r
    return mask


class DecodeCandidatesd(MapTransform):
    """Add ``"candidates"`` ((K, 6) world-mm table) and ``"scan_stats"`` ((1, 7), detection Dice) to a decollated item.

    Expects ``pred`` = the network's dict output for one scan (eval mode: probabilities), ``index_to_world`` = the
    (4, 4) matrix of the processed image and, for the Dice, ``label["mask"]`` = the (1, X, Y, Z) nodule mask.

    Args:
        settings: peak-decoding settings.
        spacing: processed voxel size in mm.
        output_stride: resolution divisor of the network's maps (``model.output_stride``). Default 1.
        dice_threshold: probability of candidates drawn as spheres for the detection Dice. Default 0.5.
    """

    def __init__(
        self,
        settings: DecodeSettings | None = None,
        spacing: Sequence[float] = (1.5, 1.5, 1.5),
        output_stride: int = 1,
        dice_threshold: float = 0.5,
        pred_key: str = "pred",
    ) -> None:
        super().__init__([pred_key])
        self.settings = settings or DecodeSettings()
        self.spacing = np.asarray(spacing, dtype=float)
        self.stride, self.dice_threshold, self.pred_key = int(output_stride), float(dice_threshold), pred_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        pred = d[self.pred_key]
        decoded = decode_peaks(
            pred["heatmap"].detach().cpu(),
            pred.get("diameter", None),
            pred.get("malignancy", None),
            self.settings,
            tuple(self.spacing * self.stride),
        )
        index = output_to_input_index(decoded["index"], self.stride)
        decoded["index"] = index
        world = candidates_to_world(index, torch.as_tensor(d["index_to_world"]).cpu().numpy())
        d["candidates"] = candidate_table(decoded, world, self.settings.max_candidates)
        d["decoded"] = decoded
        stats = torch.zeros(1, 7)
        stats[0, 5] = SCAN_STATS
        label = d.get("label")
        if isinstance(label, Mapping) and "mask" in label:
            true = label["mask"].detach().cpu().numpy()[0] > 0
            keep = decoded["score"] >= self.dice_threshold
            pred_mask = sphere_mask(true.shape, index[keep], decoded["diameter_mm"][keep], self.spacing)
            stats[0, 0] = float(detection_dice(pred_mask, true))
        d["scan_stats"] = stats
        return d
