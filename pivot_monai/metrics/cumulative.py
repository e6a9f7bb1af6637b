"""Validation metrics as MONAI ``CumulativeIterationMetric`` s: buffer per-scan tables, compute once over all scans.

Buffers hold fixed-size tensors (candidate and nodule tables, see :mod:`pivot_monai.transforms.nodules`), so
MONAI's ``Cumulative.get_buffer`` all-gathers them across DDP ranks and the metric is computed once over the whole
validation set. No ignite import: :class:`monai.handlers.IgniteMetricHandler` adapts it to the evaluator.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

from pivot_monai.data.annotations import Nodule
from pivot_monai.metrics.detection import center_accuracy, malignancy_auc, size_accuracy, size_mae
from pivot_monai.metrics.froc import FROCResult, compute_froc
from pivot_monai.metrics.matching import ScanCandidates

__all__ = ["METRIC_NAMES", "SCAN_STATS", "DetectionMetric", "FROCCache", "tables_to_inputs"]

METRIC_NAMES = ("froc_score", "detection_dice", "center_accuracy", "size_accuracy", "size_mae", "malignancy_auc")
SCAN_STATS = 3.0  # ``kind`` of the extra row of a nodule table that carries per-scan statistics (column 0: dice)


def tables_to_inputs(
    candidates: np.ndarray, nodules: np.ndarray
) -> tuple[dict[str, ScanCandidates], dict[str, list[Nodule]], dict[str, list[Nodule]], list[str]]:
    """Convert stacked ``(N, K, 6)`` candidate and ``(N, M, 7)`` nodule tables into :func:`compute_froc` inputs."""
    cands, ann, exc, uids = {}, {}, {}, []
    for i in range(len(candidates)):
        uid = f"scan{i:05d}"
        uids.append(uid)
        c = candidates[i]
        c = c[c[:, 3] >= 0]
        cands[uid] = ScanCandidates(
            c[:, :3].astype(float), c[:, 3].astype(float), c[:, 4].astype(float), c[:, 5].astype(float)
        )
        rows = nodules[i]
        for kind, target in ((1.0, ann), (2.0, exc)):
            sel = rows[rows[:, 5] == kind]
            target[uid] = [
                Nodule(
                    uid, tuple(float(v) for v in r[:3]), float(r[3]), None if r[4] < 0 else (5.0 if r[4] > 0.5 else 1.0)
                )
                for r in sel
            ]
    return cands, ann, exc, uids


class FROCCache:
    """The FROC of the most recent candidate/nodule tables, shared by the metrics of one evaluator.

    Each metric of a validation round (``froc_score``, ``center_accuracy``, ``size_accuracy``, ...) is its own MONAI
    metric with its own buffers, and MONAI aggregates them one after another; they all hold the same tables. One slot
    keyed on a digest of the tables' bytes (cheap beside the matching) lets them match the candidates once per round;
    the next round's tables differ and are matched again.
    """

    def __init__(self) -> None:
        self._key: str | None = None
        self._result: FROCResult | None = None
        self.computed = 0  # FROCs actually computed (not served from the slot)

    def get(self, candidates: np.ndarray, nodules: np.ndarray, max_candidates: int) -> FROCResult:
        """The FROC of these tables: from the slot when they match the last call's, else computed (and logged)."""
        digest = hashlib.blake2b(digest_size=16)
        for table in (candidates, nodules):
            table = np.ascontiguousarray(table, dtype=np.float32)
            digest.update(repr(table.shape).encode())
            digest.update(table.tobytes())
        key = f"{digest.hexdigest()}:{max_candidates}"
        if key != self._key or self._result is None:
            cands, ann, exc, uids = tables_to_inputs(candidates, nodules)
            self._result = compute_froc(cands, ann, uids, exc, max_candidates_per_scan=max_candidates)
            self._key = key
            self.computed += 1
        return self._result


class DetectionMetric(CumulativeIterationMetric):
    """One validation metric over whole scans.

    ``y_pred``: (B, K, 6) candidate tables in world mm. ``y``: (B, M, 7) nodule tables, whose rows of kind
    ``SCAN_STATS`` carry the scan's detection Dice in column 0.

    Args:
        metric: one of ``froc_score`` (LUNA16 CPM), ``detection_dice`` (mean over scans of the voxel Dice between the
            spheres of candidates with probability >= 0.5 and the nodule label), ``center_accuracy`` (fraction of
            nodules whose best hit with probability >= ``threshold`` lies within half the radius), ``size_accuracy``
            (fraction of detected nodules with relative diameter error <= 25%), ``size_mae`` (mm),
            ``malignancy_auc``.
        threshold: operating probability for the per-nodule metrics. Default 0.5.
        max_candidates: per scan, as LUNA16. Default 100.
        froc_cache: shared with the other metrics of the same evaluator, so a round computes its FROC once
            (:func:`pivot_monai.handlers.build_validation_metrics` does this); ``None``: a cache of its own.

    Raises:
        ValueError: unknown metric name (naming ``validation.metrics``).
    """

    def __init__(
        self,
        metric: str = "froc_score",
        threshold: float = 0.5,
        max_candidates: int = 100,
        froc_cache: FROCCache | None = None,
    ) -> None:
        super().__init__()
        self.froc_cache = froc_cache if froc_cache is not None else FROCCache()
        if metric not in METRIC_NAMES:
            raise ValueError(f"validation.metrics: unknown metric {metric!r}; valid: {list(METRIC_NAMES)}")
        self.metric, self.threshold, self.max_candidates = metric, float(threshold), int(max_candidates)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> Any:
        if y is None:
            raise ValueError("DetectionMetric needs nodule tables as y")
        return y_pred.detach().float().cpu(), y.detach().float().cpu()

    def aggregate(self) -> float:
        buffers = self.get_buffer()
        if not isinstance(buffers, (list, tuple)) or len(buffers) != 2 or buffers[0] is None:
            return math.nan
        candidates, nodules = (b.numpy() for b in buffers)
        if self.metric == "detection_dice":
            stats = nodules[nodules[..., 5] == SCAN_STATS]
            return float(stats[:, 0].mean()) if len(stats) else math.nan
        # every metric of a validation round matches the same candidates: the FROC (and its log line) is computed once
        result = self.froc_cache.get(candidates, nodules, self.max_candidates)
        if self.metric == "froc_score":
            return float(result.cpm) if not math.isnan(result.cpm) else 0.0
        recs = result.records
        if self.metric == "center_accuracy":
            return float(center_accuracy(recs, threshold=self.threshold, radius_fraction=0.5))
        if self.metric == "size_accuracy":
            return float(size_accuracy(recs, threshold=self.threshold))
        if self.metric == "size_mae":
            return float(size_mae(recs, threshold=self.threshold))
        return float(malignancy_auc(recs, threshold=self.threshold))
