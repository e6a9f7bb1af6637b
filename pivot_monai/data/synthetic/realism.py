"""Realism report: measurable statistics of generated scans next to published real-CT figures.

:func:`scan_statistics` measures one :class:`~pivot_monai.data.synthetic.dataset.SyntheticScan` the way CT
quantification studies measure patients (lung densitometry, vessel volume, vessel calibre); :func:`realism_report`
aggregates many and prints each statistic beside its reference range and source, flagging those outside it.

Vessel volumes come from the generator's own vessel segments (exact geometry, as a CT vessel segmentation would
ideally give); everything else is measured on the image and the lung mask.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from pivot_monai.data.synthetic.raster import TubeSet

__all__ = ["REFERENCES", "Reference", "realism_report", "scan_statistics", "vessel_volumes"]

_BV5_RADIUS_MM = float(np.sqrt(5.0 / np.pi))  # cross-section < 5 mm^2
_VESSEL_HU = -500.0  # image threshold for vessel cross-sections and the distance-to-vessel map


@dataclass(frozen=True)
class Reference:
    """A published real-CT range for one statistic.

    Attributes:
        key: statistic name in :func:`scan_statistics`' output.
        label: what is measured, with units.
        low, high: the reference range (None: no bound).
        source: where the range comes from.
    """

    key: str
    label: str
    low: float | None
    high: float | None
    source: str


REFERENCES: tuple[Reference, ...] = (
    Reference(
        "mld_hu",
        "mean lung density (HU)",
        -880.0,
        -800.0,
        "inspiratory adult CT densitometry, e.g. Mohamed Hoesein et al., PLoS One 2013;8:e65177 (NELSON)",
    ),
    Reference(
        "perc15_hu",
        "15th percentile of lung HU (Perc15)",
        -935.0,
        -890.0,
        "Mohamed Hoesein et al., PLoS One 2013;8:e65177: mean -912 to -921 HU in 1,140 smokers",
    ),
    Reference(
        "laa950_pct",
        "lung below -950 HU (%LAA-950)",
        0.0,
        10.0,
        "Gevenois et al., AJRCCM 1996;154:187 (-950 HU threshold); under ~5 % without emphysema",
    ),
    Reference(
        "lung_volume_l",
        "lung volume (L)",
        3.5,
        7.0,
        "adult total lung capacity, Stocks & Quanjer, Eur Respir J 1995;8:492 (CT volumes at inspiration)",
    ),
    Reference(
        "tbv_ml",
        "intrapulmonary blood-vessel volume TBV (mL)",
        90.0,
        170.0,
        "QIMS 2024;14(5):3289 (656 men): 121 +- 26 mL non-smokers, 135 +- 24 mL smokers",
    ),
    Reference(
        "vessel_fraction_pct",
        "vessel volume / lung volume (%)",
        1.5,
        4.0,
        "the TBV range above over 4-6 L lungs",
    ),
    Reference(
        "bv5_tbv",
        "BV5/TBV (share of vessel volume in cross-sections < 5 mm^2)",
        0.35,
        0.65,
        "Estepar et al., AJRCCM 2013;188:231 (COPDGene; lower with emphysema) - approximate cohort range",
    ),
    Reference(
        "cross_sections_per_slice",
        "vessel cross-sections per axial lung slice (mid 60 % of the lung)",
        100.0,
        None,
        "no published count found; real thin-section CT shows hundreds per slice",
    ),
    Reference(
        "within_10mm_pct",
        "lung within 10 mm of a visible vessel (%)",
        95.0,
        100.0,
        "secondary lobules 1-2.5 cm, each with a centrilobular artery: Webb, Radiology 2006;239:322",
    ),
    Reference(
        "noise_hu",
        "image noise sigma (HU)",
        10.0,
        60.0,
        "clinical to low-dose chest CT protocols (PIVOT issue: 10-60 HU in the lungs)",
    ),
    Reference(
        "nodule_median_mm",
        "median nodule diameter (mm)",
        5.0,
        8.0,
        "LUNA16, Setio et al., MedIA 2017;42:1 (1,186 nodules >= 3 mm, most 4-10 mm)",
    ),
    Reference(
        "subsolid_pct",
        "part-solid + ground-glass nodules (%)",
        10.0,
        30.0,
        "LIDC-IDRI texture ratings, Armato et al., Med Phys 2011;38:915 - approximate",
    ),
)


def vessel_volumes(vessels: TubeSet, inside: np.ndarray | None = None) -> tuple[float, float]:
    """``(TBV, BV5)`` in mL: volume of the vessel segments, and of those with cross-sections under 5 mm^2.

    Args:
        vessels: pulmonary vessel segments (truncated cones; overlaps at joints are ignored).
        inside: optional (N,) bool, segments to count (e.g. those inside the lungs).
    """
    if not len(vessels):
        return 0.0, 0.0
    length = np.linalg.norm(vessels.b - vessels.a, axis=1)
    ra, rb = vessels.ra, vessels.rb
    vol = np.pi * length * (ra * ra + ra * rb + rb * rb) / 3.0
    small = 0.5 * (ra + rb) < _BV5_RADIUS_MM
    if inside is not None:
        vol = vol * inside
    return float(vol.sum() / 1000.0), float(vol[small].sum() / 1000.0)


def scan_statistics(scan: Any) -> dict[str, Any]:
    """Measure one generated scan (see :data:`REFERENCES` for the keys).

    Args:
        scan: a :class:`~pivot_monai.data.synthetic.dataset.SyntheticScan` (its ``info`` carries ``tbv_ml`` and
            ``bv5_ml``).

    Returns:
        Statistic name -> value, plus ``kinds`` and ``placements`` counters of the annotated nodules.
    """
    spacing = np.asarray(scan.geometry.spacing, dtype=np.float64)
    lung = scan.lung_mask
    hu = scan.array[lung].astype(np.float32)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    lung_ml = float(lung.sum()) * voxel_ml
    stats: dict[str, Any] = {
        "mld_hu": float(hu.mean()),
        "perc15_hu": float(np.percentile(hu, 15)),
        "laa950_pct": 100.0 * float((hu < -950).mean()),
        "lung_volume_l": lung_ml / 1000.0,
        "hu_percentiles": [float(v) for v in np.percentile(hu, [5, 25, 50, 75, 95])],
        "noise_hu": float(scan.info.get("noise_hu", np.nan)),
    }
    tbv, bv5 = float(scan.info.get("tbv_ml", np.nan)), float(scan.info.get("bv5_ml", np.nan))
    stats.update(tbv_ml=tbv, bv5_tbv=bv5 / tbv if tbv > 0 else np.nan, vessel_fraction_pct=100.0 * tbv / lung_ml)
    vessel = lung & (ndimage.gaussian_filter(scan.array.astype(np.float32), 0.7 / spacing) > _VESSEL_HU)
    stats["cross_sections_per_slice"] = _cross_sections(vessel, lung, _axial_axis(scan.geometry))
    stats["within_10mm_pct"] = _within(vessel, lung, spacing, 10.0)
    diam = [f["diameter_mm"] for f in scan.findings if not f["excluded"]]
    stats["diameters"] = diam
    stats["kinds"] = Counter(f["kind"] for f in scan.findings if not f["excluded"])
    stats["placements"] = Counter(f["placement"] for f in scan.findings if not f["excluded"])
    return stats


def _axial_axis(geometry: Any) -> int:
    """Index axis closest to world z (the axial slice normal)."""
    return int(np.argmax(np.abs(np.asarray(geometry.direction, dtype=np.float64)[2])))


def _cross_sections(vessel: np.ndarray, lung: np.ndarray, axis: int) -> float:
    """Mean count of 2D connected vessel blobs per axial slice over the middle 60 % of the lung's slices."""
    slices = np.flatnonzero(lung.any(axis=tuple(a for a in range(3) if a != axis)))
    if not len(slices):
        return 0.0
    lo, hi = slices[0], slices[-1]
    mid = range(int(lo + 0.2 * (hi - lo)), int(hi - 0.2 * (hi - lo)) + 1)
    counts = [ndimage.label(np.take(vessel, k, axis=axis))[1] for k in mid]
    return float(np.mean(counts)) if counts else 0.0


def _within(vessel: np.ndarray, lung: np.ndarray, spacing: np.ndarray, mm: float) -> float:
    """Percentage of lung voxels within ``mm`` of a vessel voxel (on the lung's bounding box)."""
    idx = np.argwhere(lung)
    if not len(idx):
        return 0.0
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0)))
    dist = ndimage.distance_transform_edt(~vessel[box], sampling=spacing)
    return 100.0 * float((dist[lung[box]] <= mm).mean())


def _aggregate(per_scan: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for ref in REFERENCES:
        if ref.key in ("nodule_median_mm", "subsolid_pct"):
            continue
        out[ref.key] = float(np.nanmedian([s[ref.key] for s in per_scan]))
    diam = [d for s in per_scan for d in s["diameters"]]
    kinds: Counter = sum((s["kinds"] for s in per_scan), Counter())
    n = max(sum(kinds.values()), 1)
    out["nodule_median_mm"] = float(np.median(diam)) if diam else float("nan")
    out["subsolid_pct"] = 100.0 * (kinds["part-solid"] + kinds["ground-glass"]) / n
    return out


def realism_report(per_scan: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Aggregate :func:`scan_statistics` of many scans into a text table against :data:`REFERENCES`.

    Returns:
        ``(text, rows)``: the printable report and one dict per statistic (``key``, ``value``, ``low``, ``high``,
        ``inside``, ``source``).
    """
    agg = _aggregate(per_scan)
    rows, lines = [], [f"Realism report over {len(per_scan)} scan(s) (medians across scans):", ""]
    lines.append(f"{'statistic':<62} {'ours':>9}  {'real CT':<14} ok  source")
    for ref in REFERENCES:
        value = agg[ref.key]
        inside = bool((ref.low is None or value >= ref.low) and (ref.high is None or value <= ref.high))
        span = f"{'' if ref.low is None else f'{ref.low:g}'}..{'' if ref.high is None else f'{ref.high:g}'}"
        lines.append(f"{ref.label:<62} {value:>9.3g}  {span:<14} {'yes' if inside else 'NO ':<3} {ref.source}")
        rows.append(
            {"key": ref.key, "value": value, "low": ref.low, "high": ref.high, "inside": inside, "source": ref.source}
        )
    kinds: Counter = sum((s["kinds"] for s in per_scan), Counter())
    places: Counter = sum((s["placements"] for s in per_scan), Counter())
    pcts = np.median([s["hu_percentiles"] for s in per_scan], axis=0)
    lines += [
        "",
        "lung HU percentiles 5/25/50/75/95: " + " / ".join(f"{v:.0f}" for v in pcts),
        "nodules by type: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())),
        "nodules by location: " + ", ".join(f"{k} {v}" for k, v in sorted(places.items())),
    ]
    return "\n".join(lines), rows
