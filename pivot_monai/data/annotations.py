"""LUNA16 CSV files: ``annotations.csv``, ``annotations_excluded.csv`` and seriesuid lists.

``annotations.csv`` columns: ``seriesuid,coordX,coordY,coordZ,diameter_mm`` in world millimetres (LPS), plus an
optional LIDC-style ``malignancy`` rating 1-5. Extra columns are ignored. ``annotations_excluded.csv`` has the same
columns; a diameter of ``-1`` (LUNA16's "unknown") is kept as is and interpreted by the FROC code.

Reading is strict about what cannot be meant (a missing column, a non-number, a non-positive diameter: an
:class:`AnnotationError` naming the file and line) and forgiving, with a warning, about what can be repaired: a row
repeated exactly is kept once, and a diameter above :data:`MAX_DIAMETER_MM` (the largest lung mass a detector of
nodules should be told about; LUNA16's largest nodule is 32 mm) is capped to it.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_MALIGNANCY_THRESHOLD",
    "MAX_DIAMETER_MM",
    "AnnotationError",
    "Nodule",
    "read_annotations",
    "read_seriesuids",
    "world_array",
    "write_annotations",
]

logger = logging.getLogger(__name__)

DEFAULT_MALIGNANCY_THRESHOLD = 4.0
MAX_DIAMETER_MM = 60.0
"""Largest plausible finding diameter (mm): lung masses reach about 6 cm; a larger value is a radius in voxels, a
unit error or a typo, and would paint a label over most of the lung."""
_REQUIRED = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")


class AnnotationError(ValueError):
    """A malformed annotation row; the message names the file, the row and the problem."""


@dataclass(frozen=True)
class Nodule:
    """One annotated finding in world coordinates.

    Attributes:
        seriesuid: scan identifier.
        world: (3,) centre in world mm (x, y, z), LPS.
        diameter_mm: diameter in mm (``-1`` allowed only for excluded findings).
        malignancy: LIDC rating 1-5, or ``None`` when the CSV has no rating.
    """

    seriesuid: str
    world: tuple[float, float, float]
    diameter_mm: float
    malignancy: float | None = None

    def is_malignant(self, threshold: float = DEFAULT_MALIGNANCY_THRESHOLD) -> bool | None:
        """Binary malignancy: rating >= ``threshold``; ``None`` when unrated."""
        return None if self.malignancy is None else self.malignancy >= threshold

    def to_dict(self) -> dict:
        return {
            "seriesuid": self.seriesuid,
            "world": list(self.world),
            "diameter_mm": self.diameter_mm,
            "malignancy": self.malignancy,
        }


def _parse_float(value: str, *, path: Path, line: int, column: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise AnnotationError(f"{path}:{line}: column {column!r} must be a number, got {value!r}") from None


def read_annotations(
    path: str | Path, *, excluded: bool = False, max_diameter_mm: float = MAX_DIAMETER_MM
) -> dict[str, list[Nodule]]:
    """Read a LUNA16 annotation CSV into ``{seriesuid: [Nodule, ...]}``.

    Args:
        path: ``annotations.csv`` or ``annotations_excluded.csv``.
        excluded: the file lists excluded findings, where a diameter of ``-1`` (unknown) is allowed.
        max_diameter_mm: larger diameters are capped to this, with a warning. Default :data:`MAX_DIAMETER_MM`.

    Returns:
        Findings grouped by seriesuid, in file order; a row identical to an earlier one (same seriesuid, centre to
        1 micrometre, diameter and rating) is dropped, with one warning giving the count and the first lines.

    Raises:
        AnnotationError: missing columns, non-numeric values, NaN or non-positive diameter, malignancy outside 1-5.
        FileNotFoundError: ``path`` does not exist.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: annotation file not found (expected LUNA16 columns {', '.join(_REQUIRED)})")
    out: dict[str, list[Nodule]] = defaultdict(list)
    seen: dict[tuple, int] = {}
    duplicates: list[str] = []
    capped: list[str] = []
    with p.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's byte-order mark is not a column
        reader = csv.DictReader(fh)
        missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise AnnotationError(
                f"{p}: missing column(s) {missing}; expected header {','.join(_REQUIRED)}"
                f"[,malignancy], got {reader.fieldnames}"
            )
        has_malignancy = "malignancy" in (reader.fieldnames or [])
        for line, row in enumerate(reader, start=2):
            uid = (row["seriesuid"] or "").strip()
            if not uid:
                raise AnnotationError(f"{p}:{line}: empty seriesuid")
            xyz = tuple(_parse_float(row[c], path=p, line=line, column=c) for c in ("coordX", "coordY", "coordZ"))
            if not all(math.isfinite(v) for v in xyz):
                raise AnnotationError(f"{p}:{line}: non-finite coordinates {xyz} for {uid}")
            diameter = _parse_float(row["diameter_mm"], path=p, line=line, column="diameter_mm")
            if not (excluded and diameter == -1) and not (math.isfinite(diameter) and diameter > 0):
                raise AnnotationError(
                    f"{p}:{line}: diameter_mm must be a positive number of mm, got {diameter} "
                    f"for {uid}; fix or remove the row"
                )
            rating = None
            if has_malignancy and (row.get("malignancy") or "").strip():
                rating = _parse_float(row["malignancy"], path=p, line=line, column="malignancy")
                if not 1.0 <= rating <= 5.0:
                    raise AnnotationError(f"{p}:{line}: malignancy must be an LIDC rating in 1..5, got {rating}")
            if diameter > max_diameter_mm:
                capped.append(f"line {line} ({uid}: {diameter:g} mm)")
                diameter = float(max_diameter_mm)
            key = (uid, *(round(v, 3) for v in xyz), round(diameter, 3), rating)
            if key in seen:
                duplicates.append(f"line {line} = line {seen[key]}")
                continue
            seen[key] = line
            out[uid].append(Nodule(uid, xyz, diameter, rating))
    if duplicates:
        logger.warning(
            "%s: %d duplicated row(s) removed (%s%s)",
            p,
            len(duplicates),
            ", ".join(duplicates[:3]),
            ", ..." if len(duplicates) > 3 else "",
        )
    if capped:
        logger.warning(
            "%s: %d diameter(s) above the plausible %g mm capped to it (%s%s); check the diameter_mm column "
            "(a radius, voxels or cm?)",
            p,
            len(capped),
            max_diameter_mm,
            ", ".join(capped[:3]),
            ", ..." if len(capped) > 3 else "",
        )
    return dict(out)


def write_annotations(path: str | Path, nodules: list[Nodule], *, with_malignancy: bool = True) -> Path:
    """Write findings as a LUNA16 CSV (with an optional ``malignancy`` column)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(_REQUIRED) + (["malignancy"] if with_malignancy else []))
        for n in nodules:
            row = [n.seriesuid, *(f"{v:.4f}" for v in n.world), f"{n.diameter_mm:.4f}"]
            if with_malignancy:
                row.append("" if n.malignancy is None else f"{n.malignancy:g}")
            w.writerow(row)
    return p


def read_seriesuids(path: str | Path) -> list[str]:
    """Read a seriesuid list: a CSV with a ``seriesuid`` header, or one uid per line."""
    p = Path(path)
    lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    if lines and lines[0].split(",")[0].strip().lower() == "seriesuid":
        lines = lines[1:]
    return [ln.split(",")[0].strip() for ln in lines]


def world_array(nodules: list[Nodule]) -> np.ndarray:
    """(N, 3) world centres of ``nodules``."""
    return np.asarray([n.world for n in nodules], dtype=np.float64).reshape(-1, 3)
