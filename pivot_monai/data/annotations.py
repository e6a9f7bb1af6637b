"""LUNA16 CSV files: ``annotations.csv``, ``annotations_excluded.csv`` and seriesuid lists.

``annotations.csv`` columns: ``seriesuid,coordX,coordY,coordZ,diameter_mm`` in world millimetres (LPS), plus an
optional LIDC-style ``malignancy`` rating 1-5. Extra columns are ignored. ``annotations_excluded.csv`` has the same
columns; a diameter of ``-1`` (LUNA16's "unknown") is kept as is and interpreted by the FROC code.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_MALIGNANCY_THRESHOLD",
    "AnnotationError",
    "Nodule",
    "read_annotations",
    "read_seriesuids",
    "world_array",
    "write_annotations",
]

DEFAULT_MALIGNANCY_THRESHOLD = 4.0
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


def read_annotations(path: str | Path, *, excluded: bool = False) -> dict[str, list[Nodule]]:
    """Read a LUNA16 annotation CSV into ``{seriesuid: [Nodule, ...]}``.

    Args:
        path: ``annotations.csv`` or ``annotations_excluded.csv``.
        excluded: the file lists excluded findings, where a diameter of ``-1`` (unknown) is allowed.

    Returns:
        Findings grouped by seriesuid, in file order.

    Raises:
        AnnotationError: missing columns, non-numeric values, NaN or non-positive diameter, malignancy outside 1-5.
        FileNotFoundError: ``path`` does not exist.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: annotation file not found (expected LUNA16 columns {', '.join(_REQUIRED)})")
    out: dict[str, list[Nodule]] = defaultdict(list)
    with p.open(newline="") as fh:
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
            out[uid].append(Nodule(uid, xyz, diameter, rating))
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
