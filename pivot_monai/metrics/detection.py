"""Per-nodule validation metrics in plain numpy (no ignite), on the matches of :mod:`pivot_monai.metrics.matching`.

Matching (re-exported here) follows the LUNA16 rules used by :func:`pivot_monai.metrics.froc.compute_froc`:

* a candidate *hits* a finding when its squared distance to the finding's centre is strictly below
  ``(diameter / 2) ** 2``; a diameter below 0 (LUNA16's "unknown", ``-1``) counts as 10 mm;
* per scan only the ``max_candidates_per_scan`` most probable candidates are kept, exactly as the official script
  does it: every candidate whose probability is strictly above the (K+1)-th highest probability is kept, so
  candidates tied with that value are all dropped;
* each true nodule is represented by its *best hit*, the hit with the highest probability (the first such candidate
  in input order on ties); a candidate hitting several nodules is a hit for each of them;
* a candidate that hits no true nodule but an excluded finding is ignored; every other candidate is a false positive.

The metrics work on the per-nodule :class:`NoduleMatch` records, optionally at an operating ``threshold``: a nodule
counts as detected at ``threshold`` when its best hit has probability ``>= threshold`` (with ``threshold=None``, any
hit counts). The best hit does not depend on the threshold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import rankdata

from pivot_monai.data.annotations import DEFAULT_MALIGNANCY_THRESHOLD
from pivot_monai.metrics.matching import (
    UNKNOWN_DIAMETER_MM,
    NoduleMatch,
    ScanCandidates,
    ScanMatch,
    match_candidates,
    match_scan,
    match_scans,
)

if TYPE_CHECKING:
    from pivot_monai.metrics.froc import FROCResult

__all__ = [
    "UNKNOWN_DIAMETER_MM",
    "NoduleMatch",
    "ScanCandidates",
    "ScanMatch",
    "center_accuracy",
    "detection_dice",
    "malignancy_auc",
    "match_candidates",
    "match_scan",
    "match_scans",
    "mean_center_distance",
    "roc_auc",
    "size_accuracy",
    "size_mae",
    "summarize_detection",
]

logger = logging.getLogger(__name__)


def _detected(matches: Sequence[NoduleMatch], threshold: float | None) -> list[NoduleMatch]:
    return [m for m in matches if m.hit and (threshold is None or m.probability >= threshold)]


def _nan(reason: str) -> float:
    logger.info("metric undefined (%s); reporting NaN", reason)
    return math.nan


def center_accuracy(
    matches: Sequence[NoduleMatch], *, threshold: float | None = None, radius_fraction: float = 1.0
) -> float:
    """Fraction of nodules whose best hit is detected at ``threshold`` and lies within ``radius_fraction`` radii.

    A nodule counts when its best hit has probability ``>= threshold`` (any hit when ``None``) and its centre
    distance is ``<= radius_fraction * diameter / 2``. Hits lie strictly inside the radius by definition, so with the
    default ``radius_fraction=1`` this is the detection sensitivity at ``threshold``; smaller fractions ask for better
    localisation. The denominator is every true nodule.

    Args:
        matches: per-nodule records from :func:`match_candidates` (or ``FROCResult.records``).
        threshold: operating probability, or ``None`` for any hit. Defaults to ``None``.
        radius_fraction: tolerance as a fraction of the nodule radius, > 0. Defaults to 1.0.

    Returns:
        Accuracy in [0, 1]; NaN when there are no nodules.

    Raises:
        ValueError: ``radius_fraction <= 0``.
    """
    if not radius_fraction > 0:
        raise ValueError(f"radius_fraction must be > 0 (a fraction of the nodule radius), got {radius_fraction}")
    if not matches:
        return _nan("center_accuracy: no nodules")
    ok = [
        m
        for m in _detected(matches, threshold)
        if radius_fraction >= 1.0 or m.distance_mm <= radius_fraction * m.diameter_mm / 2.0
    ]
    return len(ok) / len(matches)


def mean_center_distance(matches: Sequence[NoduleMatch], *, threshold: float | None = None) -> float:
    """Mean distance (mm) between nodule centre and best hit, over the nodules detected at ``threshold``.

    Args:
        matches: per-nodule records.
        threshold: operating probability, or ``None`` for any hit. Defaults to ``None``.

    Returns:
        Mean distance in mm; NaN when no nodule is detected.
    """
    hits = _detected(matches, threshold)
    return float(np.mean([m.distance_mm for m in hits])) if hits else _nan("mean_center_distance: no hits")


def _size_pairs(matches: Sequence[NoduleMatch], threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    pairs = [
        (m.predicted_diameter_mm, m.diameter_mm)
        for m in _detected(matches, threshold)
        if m.predicted_diameter_mm is not None
    ]
    arr = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def size_mae(matches: Sequence[NoduleMatch], *, threshold: float | None = None) -> float:
    """Mean absolute diameter error (mm) ``|predicted - true|`` over detected nodules with a predicted diameter.

    Args:
        matches: per-nodule records (predicted diameter taken at the best hit).
        threshold: operating probability, or ``None`` for any hit. Defaults to ``None``.

    Returns:
        MAE in mm; NaN when no detected nodule has a predicted diameter.
    """
    pred, true = _size_pairs(matches, threshold)
    return float(np.mean(np.abs(pred - true))) if pred.size else _nan("size_mae: no predicted diameters on hits")


def size_accuracy(matches: Sequence[NoduleMatch], *, threshold: float | None = None, tolerance: float = 0.25) -> float:
    """Fraction of detected nodules (with a predicted diameter) whose relative size error is within ``tolerance``.

    The relative error is ``|predicted - true| / true``; a nodule counts when it is ``<= tolerance`` (default 25 %).

    Args:
        matches: per-nodule records.
        threshold: operating probability, or ``None`` for any hit. Defaults to ``None``.
        tolerance: allowed relative error, >= 0. Defaults to 0.25.

    Returns:
        Accuracy in [0, 1]; NaN when no detected nodule has a predicted diameter.

    Raises:
        ValueError: negative ``tolerance``.
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be a relative error >= 0 (e.g. 0.25), got {tolerance}")
    pred, true = _size_pairs(matches, threshold)
    if not pred.size:
        return _nan("size_accuracy: no predicted diameters on hits")
    return float(np.mean(np.abs(pred - true) / true <= tolerance))


def roc_auc(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank formula, ties sharing their average rank.

    ``AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` where ``R_pos`` is the rank sum of the positives;
    equivalently the probability that a random positive outscores a random negative, ties counting 1/2.

    Args:
        labels: (N,) binary labels (truthy = positive).
        scores: (N,) scores, higher meaning more positive.

    Returns:
        AUC in [0, 1]; NaN when only one class is present.

    Raises:
        ValueError: mismatched lengths or non-finite scores.
    """
    y = np.asarray(labels).astype(bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape or not np.isfinite(s).all():
        raise ValueError(f"roc_auc needs finite scores with one per label, got {s.size} scores for {y.size} labels")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return _nan(f"roc_auc: one class only ({n_pos} positive, {n_neg} negative)")
    r_pos = rankdata(s)[y].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def malignancy_auc(
    matches: Sequence[NoduleMatch],
    *,
    threshold: float | None = None,
    rating_threshold: float = DEFAULT_MALIGNANCY_THRESHOLD,
) -> float:
    """ROC AUC of the predicted malignancy at the best hit against ``rating >= rating_threshold``.

    Uses the detected nodules (at ``threshold``) that have both an LIDC rating and a predicted malignancy.

    Args:
        matches: per-nodule records.
        threshold: operating probability, or ``None`` for any hit. Defaults to ``None``.
        rating_threshold: ratings at or above it are malignant. Defaults to 4.

    Returns:
        AUC in [0, 1]; NaN when fewer than two classes remain.
    """
    pairs = [
        (m.malignancy >= rating_threshold, m.predicted_malignancy)
        for m in _detected(matches, threshold)
        if m.malignancy is not None and m.predicted_malignancy is not None
    ]
    if not pairs:
        return _nan("malignancy_auc: no rated hits with a predicted malignancy")
    labels, scores = zip(*pairs)
    return roc_auc(labels, scores)


def detection_dice(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Voxel Dice ``2 |P & T| / (|P| + |T|)`` of two binary volumes (non-zero = foreground).

    Args:
        pred_mask: predicted mask, any shape.
        true_mask: reference mask, same shape.

    Returns:
        Dice in [0, 1]; 1.0 when both masks are empty.

    Raises:
        ValueError: shapes differ.
    """
    p, t = np.asarray(pred_mask) != 0, np.asarray(true_mask) != 0
    if p.shape != t.shape:
        raise ValueError(f"detection_dice needs masks of one shape, got pred {p.shape} and true {t.shape}")
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, t).sum()) / total


def _json_float(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def summarize_detection(
    froc_result: FROCResult,
    matches: Sequence[NoduleMatch] | None = None,
    *,
    threshold: float | None = None,
    rating_threshold: float = DEFAULT_MALIGNANCY_THRESHOLD,
    size_tolerance: float = 0.25,
    radius_fraction: float = 1.0,
) -> dict[str, Any]:
    """Every validation metric as one flat, JSON-safe dict (NaN written as ``None``) for ``metrics.json``.

    Keys: ``cpm``, ``sensitivity@<rate>`` for each FROC rate, ``cpm_ci``/``sensitivity_ci`` when bootstrapped,
    ``n_scans``, ``n_nodules``, ``n_detected``, ``detection_sensitivity`` (detected / nodules with all kept
    candidates), ``fp_per_scan``, and ``center_accuracy``, ``mean_center_distance_mm``, ``size_mae_mm``,
    ``size_accuracy``, ``malignancy_auc`` at ``threshold``.

    Args:
        froc_result: output of :func:`pivot_monai.metrics.froc.compute_froc`.
        matches: per-nodule records. Defaults to ``froc_result.records``.
        threshold: operating probability for the per-nodule metrics, ``None`` for any hit. Defaults to ``None``.
        rating_threshold: malignant when the rating is at or above it. Defaults to 4.
        size_tolerance: relative error allowed by ``size_accuracy``. Defaults to 0.25.
        radius_fraction: tolerance of ``center_accuracy``. Defaults to 1.0.

    Returns:
        The metrics dict.
    """
    recs = list(froc_result.records if matches is None else matches)
    r = froc_result
    out: dict[str, Any] = {"cpm": _json_float(r.cpm)}
    out.update({f"sensitivity@{rate:g}": _json_float(s) for rate, s in zip(r.fp_rates, r.sensitivities)})
    if r.ci is not None:
        out["cpm_ci"] = [_json_float(r.ci["cpm_lower"]), _json_float(r.ci["cpm_upper"])]
        out["sensitivity_ci"] = [
            [_json_float(lo), _json_float(hi)] for lo, hi in zip(r.ci["sensitivity_lower"], r.ci["sensitivity_upper"])
        ]
    out.update(
        n_scans=r.n_scans,
        n_nodules=r.n_nodules,
        n_detected=r.n_detected,
        detection_sensitivity=_json_float(r.n_detected / r.n_nodules if r.n_nodules else math.nan),
        fp_per_scan=_json_float(r.n_false_positives / r.n_scans if r.n_scans else math.nan),
        threshold=threshold,
    )
    out.update(
        center_accuracy=_json_float(center_accuracy(recs, threshold=threshold, radius_fraction=radius_fraction)),
        mean_center_distance_mm=_json_float(mean_center_distance(recs, threshold=threshold)),
        size_mae_mm=_json_float(size_mae(recs, threshold=threshold)),
        size_accuracy=_json_float(size_accuracy(recs, threshold=threshold, tolerance=size_tolerance)),
        malignancy_auc=_json_float(malignancy_auc(recs, threshold=threshold, rating_threshold=rating_threshold)),
    )
    return out
