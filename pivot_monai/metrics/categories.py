"""Per-category sensitivities and FP/scan operating points from a FROC result: where a detector fails, not only how
often.

Categories follow the LUNA16/LIDC breakdowns that matter clinically: size (< 6, 6-10, >= 10 mm), type (solid,
part-solid, ground-glass, calcified) and location (isolated, juxtavascular, juxtapleural, perifissural). Each is
reported as the sensitivity at one operating point of the whole FROC curve (the score threshold at which the
detector makes ``fp_per_scan`` false positives per scan) with a nodule-level bootstrap 95 % interval, beside the
share of those nodules hit by any kept candidate.

Plain maths over :class:`~pivot_monai.metrics.froc.FROCResult` (no ignite, no I/O).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pivot_monai.metrics.froc import FROCResult

__all__ = [
    "SIZE_BINS",
    "category_sensitivities",
    "format_category_table",
    "fp_per_scan_at_sensitivity",
    "size_bin",
    "threshold_at_fp_rate",
]

SIZE_BINS = ("<6 mm", "6-10 mm", ">=10 mm")


def size_bin(diameter_mm: float) -> str:
    """The LUNA16-style size bin of a nodule: ``<6 mm``, ``6-10 mm`` or ``>=10 mm``."""
    if diameter_mm < 6.0:
        return SIZE_BINS[0]
    return SIZE_BINS[1] if diameter_mm < 10.0 else SIZE_BINS[2]


def fp_per_scan_at_sensitivity(froc: FROCResult, sensitivity: float) -> float:
    """Fewest false positives per scan at which the FROC curve reaches ``sensitivity`` (inf if it never does)."""
    reached = np.flatnonzero(np.nan_to_num(froc.sensitivity, nan=-1.0) >= sensitivity - 1e-12)
    return float(froc.fps[reached[0]]) if len(reached) else math.inf


def threshold_at_fp_rate(froc: FROCResult, fp_per_scan: float) -> float:
    """Lowest score threshold whose curve point stays at or under ``fp_per_scan`` false positives per scan."""
    ok = np.flatnonzero(froc.fps <= fp_per_scan + 1e-12)
    return float(froc.thresholds[ok[-1]]) if len(ok) else math.inf


def _bootstrap_ci(hits: np.ndarray, n: int, rng: np.random.Generator) -> list[float] | None:
    if n <= 0 or hits.size < 2:
        return None
    means = rng.choice(hits, size=(n, hits.size), replace=True).mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def category_sensitivities(
    froc: FROCResult,
    categories: Mapping[tuple[str, int], Mapping[str, str]],
    *,
    fp_per_scan: float = 2.0,
    bootstrap: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Sensitivity per category at the threshold where the whole curve makes ``fp_per_scan`` FPs per scan.

    Args:
        froc: FROC analysis of the detector (its ``records``: one per true nodule).
        categories: ``{(seriesuid, nodule_index): {"size": ..., "type": ..., "location": ...}}``; the size bin is
            taken from the record's diameter when ``"size"`` is missing. Nodules without an entry count only for
            size.
        fp_per_scan: operating point. Defaults to 2.
        bootstrap: nodule-level bootstrap resamples for the 95 % intervals (0 disables). Defaults to 1000.
        seed: bootstrap seed. Defaults to 0.

    Returns:
        One dict per (group, category) with ``group``, ``category``, ``n``, ``sensitivity``, ``ci`` and
        ``detected`` (hit by any kept candidate), ordered by group then category.
    """
    threshold = threshold_at_fp_rate(froc, fp_per_scan)
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str], list[tuple[bool, bool]]] = {}
    for rec in froc.records:
        cats = dict(categories.get((rec.seriesuid, rec.nodule_index), {}))
        cats.setdefault("size", size_bin(rec.diameter_mm))
        at_point = bool(rec.hit and rec.probability is not None and rec.probability >= threshold)
        for group, value in cats.items():
            groups.setdefault((group, value), []).append((at_point, bool(rec.hit)))
    order = {"size": 0, "type": 1, "location": 2}

    def key(item: tuple[tuple[str, str], list]) -> tuple:
        group, value = item[0]
        rank = SIZE_BINS.index(value) if group == "size" and value in SIZE_BINS else 0
        return order.get(group, 9), group, rank, value

    rows = []
    for (group, value), pairs in sorted(groups.items(), key=key):
        hits = np.array([p[0] for p in pairs], dtype=np.float64)
        rows.append(
            {
                "group": group,
                "category": value,
                "n": len(pairs),
                "sensitivity": float(hits.mean()),
                "ci": _bootstrap_ci(hits, bootstrap, rng),
                "detected": float(np.mean([p[1] for p in pairs])),
                "fp_per_scan": fp_per_scan,
            }
        )
    return rows


def format_category_table(rows: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """A plain-text table of :func:`category_sensitivities` rows."""
    lines = [title] if title else []
    lines.append(f"{'group':<9} {'category':<14} {'n':>4}  {'sens':>5}  {'95% CI':<13} {'any hit':>7}")
    for r in rows:
        ci = "" if r["ci"] is None else f"{r['ci'][0]:.2f}-{r['ci'][1]:.2f}"
        lines.append(
            f"{r['group']:<9} {r['category']:<14} {r['n']:>4}  {r['sensitivity']:>5.2f}  {ci:<13} {r['detected']:>7.2f}"
        )
    return "\n".join(lines)
