"""LUNA16 FROC and CPM with the rules of the official ``noduleCADEvaluationLUNA16.py``, in plain numpy (no ignite).

Candidates are matched to nodules by :func:`pivot_monai.metrics.detection.match_scans` (strict radius test, unknown
excluded diameter = 10 mm, best hit per nodule, hits on excluded findings ignored, at most 100 candidates per scan).
The official script then feeds one score per detected nodule (its best hit) and one per false positive to
``sklearn.metrics.roc_curve`` and rescales it; that curve is, point for point,

* ``fps(t) = #FP with probability >= t / n_scans`` over *all* evaluated scans, nodule-free ones included,
* ``sensitivity(t) = #detected nodules with best-hit probability >= t / n_nodules`` (missed nodules count in the
  denominator only),

at every distinct probability ``t`` (descending), preceded by ``(0, 0)``. sklearn's ``drop_intermediate`` only drops
collinear points, which does not change the linear interpolation ``np.interp(fp_rates, fps, sensitivity)`` that
gives the sensitivities at 1/8 ... 8 FP/scan; CPM is their mean. Where the official script yields NaN (no detected
nodule) this module reports 0; with no nodule at all the sensitivities are NaN and a warning is logged.

The optional bootstrap resamples scans with replacement, as the official script does, keeping ``n_scans`` fixed.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pivot_monai.data.annotations import Nodule
from pivot_monai.files import atomic_open
from pivot_monai.metrics.matching import NoduleMatch, ScanCandidates, ScanMatch, match_scans

__all__ = [
    "LUNA16_FP_RATES",
    "SUBMISSION_COLUMNS",
    "FROCResult",
    "ScanCandidates",
    "candidates_from_rows",
    "compute_froc",
    "read_submission_csv",
    "write_submission_csv",
]

logger = logging.getLogger(__name__)

LUNA16_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
SUBMISSION_COLUMNS: tuple[str, ...] = ("seriesuid", "coordX", "coordY", "coordZ", "probability")
_OPTIONAL_COLUMNS = ("diameter_mm", "malignancy_probability")
_CI_PERCENTILES = (2.5, 97.5)
_CI_GRID_POINTS = 49


def _rows_to_candidates(rows: Iterable[Mapping[str, Any]], where: Callable[[int], str]) -> dict[str, ScanCandidates]:
    grouped: dict[str, dict[str, list[float]]] = {}
    for i, row in enumerate(rows):
        missing = [c for c in SUBMISSION_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"{where(i)}: missing {missing}; expected columns {','.join(SUBMISSION_COLUMNS)}")
        uid = str(row["seriesuid"]).strip()
        if not uid:
            raise ValueError(f"{where(i)}: empty seriesuid")
        values = {}
        for col in SUBMISSION_COLUMNS[1:] + _OPTIONAL_COLUMNS:
            raw = row.get(col)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                if col in _OPTIONAL_COLUMNS:
                    values[col] = math.nan
                    continue
                raise ValueError(f"{where(i)}: column {col!r} is empty for {uid}")
            try:
                values[col] = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"{where(i)}: column {col!r} must be a number, got {raw!r}") from None
            if col in SUBMISSION_COLUMNS and not math.isfinite(values[col]):
                raise ValueError(f"{where(i)}: column {col!r} must be finite, got {raw!r} for {uid}")
        scan = grouped.setdefault(uid, {c: [] for c in SUBMISSION_COLUMNS[1:] + _OPTIONAL_COLUMNS})
        for col, v in values.items():
            scan[col].append(v)
    out = {}
    for uid, cols in grouped.items():
        optional = [np.asarray(cols[c]) for c in _OPTIONAL_COLUMNS]
        diameter, malignancy = (None if np.isnan(a).all() else a for a in optional)
        out[uid] = ScanCandidates(
            np.column_stack([cols["coordX"], cols["coordY"], cols["coordZ"]]),
            np.asarray(cols["probability"]),
            diameter,
            malignancy,
        )
    return out


def candidates_from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, ScanCandidates]:
    """Group submission-style rows into ``{seriesuid: ScanCandidates}``, keeping row order within each scan.

    Args:
        rows: mappings with ``seriesuid, coordX, coordY, coordZ, probability`` (strings or numbers) and optional
            ``diameter_mm``, ``malignancy_probability`` (empty or absent = missing).

    Returns:
        Candidates per scan; an optional column that is missing on every row of a scan becomes ``None``.

    Raises:
        ValueError: a missing column, or a value that is not a (finite) number; the message names the row index.
    """
    return _rows_to_candidates(rows, lambda i: f"row {i}")


def read_submission_csv(path: str | Path) -> dict[str, ScanCandidates]:
    """Read a LUNA16 submission CSV (``seriesuid,coordX,coordY,coordZ,probability``, extra columns allowed).

    Args:
        path: the CSV file.

    Returns:
        ``{seriesuid: ScanCandidates}`` in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: missing columns or malformed values; the message names the file and line.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: submission file not found (expected columns {','.join(SUBMISSION_COLUMNS)})")
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in SUBMISSION_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{p}: missing column(s) {missing}; expected header {','.join(SUBMISSION_COLUMNS)}, "
                f"got {reader.fieldnames}"
            )
        return _rows_to_candidates(reader, lambda i: f"{p}:{i + 2}")


def _fmt(value: float) -> str:
    """Plain positional decimal that round-trips exactly (no exponent); NaN becomes an empty field."""
    return "" if not math.isfinite(value) else np.format_float_positional(float(value), trim="0")


def write_submission_csv(path: str | Path, candidates: Mapping[str, Any]) -> Path:
    """Write candidates as a LUNA16 submission CSV that the official evaluation script reads unchanged.

    The header comes first: ``seriesuid,coordX,coordY,coordZ,probability``, then ``diameter_mm`` and/or
    ``malignancy_probability`` when any scan has them (empty fields where a scan or candidate has none). Numbers
    are plain decimals that parse back to the same floats.

    Args:
        path: output file; parent folders are created.
        candidates: ``{seriesuid: ScanCandidates}`` (or ``(world, probability)`` pairs).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: a value that is not candidates.
        OSError: the file cannot be written (full disk, read-only folder); an earlier file of that name is kept.
    """
    scans = {uid: ScanCandidates.coerce(c, f"candidates[{uid!r}]") for uid, c in candidates.items()}
    extra = [
        col
        for col, attr in zip(_OPTIONAL_COLUMNS, ("diameter_mm", "malignancy"))
        if any(getattr(s, attr) is not None for s in scans.values())
    ]
    p = Path(path)
    with atomic_open(p, newline="") as fh:  # a full disk or a kill never leaves a truncated file under its name
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(list(SUBMISSION_COLUMNS) + extra)
        for uid, scan in scans.items():
            for k in range(len(scan)):
                row = [uid, *(_fmt(v) for v in scan.world[k]), _fmt(scan.probability[k])]
                for col, attr in zip(_OPTIONAL_COLUMNS, ("diameter_mm", "malignancy")):
                    if col in extra:
                        values = getattr(scan, attr)
                        row.append("" if values is None else _fmt(values[k]))
                writer.writerow(row)
    return p


@dataclass(frozen=True)
class _Entries:
    """FROC entries (one per detected nodule, one per FP) sorted by descending probability."""

    score: np.ndarray
    is_tp: np.ndarray
    scan: np.ndarray
    ends: np.ndarray  # last position of each run of equal scores

    @classmethod
    def from_scans(cls, scans: Sequence[ScanMatch]) -> _Entries:
        parts = [(s.tp_probability, s.fp_probability) for s in scans]
        score = np.concatenate([np.zeros(0)] + [a for pair in parts for a in pair])
        is_tp = np.concatenate([np.zeros(0)] + [np.r_[np.ones(tp.size), np.zeros(fp.size)] for tp, fp in parts])
        scan = np.concatenate(
            [np.zeros(0, dtype=np.int64)]
            + [np.full(tp.size + fp.size, i, dtype=np.int64) for i, (tp, fp) in enumerate(parts)]
        )
        order = np.argsort(-score, kind="stable")
        score, is_tp, scan = score[order], is_tp[order], scan[order]
        ends = np.flatnonzero(np.r_[score[1:] != score[:-1], True]) if score.size else np.zeros(0, dtype=np.int64)
        return cls(score, is_tp, scan, ends)

    def curve(
        self, n_scans: int, n_nodules: float, scan_weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fps, sensitivity, thresholds), each with the leading ``(0, 0, inf)`` point; scans weighted if given."""
        w = np.ones(self.score.size) if scan_weights is None else scan_weights[self.scan].astype(np.float64)
        tp = np.cumsum(w * self.is_tp)[self.ends]
        fp = np.cumsum(w * (1.0 - self.is_tp))[self.ends]
        fps = np.r_[0.0, fp] / n_scans
        sens = np.r_[0.0, tp] / n_nodules if n_nodules > 0 else np.full(fps.shape, np.nan)
        return fps, sens, np.r_[np.inf, self.score[self.ends]]


@dataclass(frozen=True, eq=False)
class FROCResult:
    """FROC analysis of a detector.

    Attributes:
        fps: (P,) curve x, average false positives per scan, non-decreasing, starting at 0.
        sensitivity: (P,) curve y (NaN when there are no nodules).
        thresholds: (P,) probability of each curve point (``inf`` for the leading ``(0, 0)``).
        fp_rates: (R,) FP/scan rates of the operating points (LUNA16: 1/8 ... 8).
        sensitivities: (R,) interpolated sensitivity at ``fp_rates``.
        cpm: mean of ``sensitivities`` (the Competition Performance Metric).
        n_nodules: true nodules in the evaluated scans.
        n_scans: evaluated scans.
        records: one :class:`~pivot_monai.metrics.detection.NoduleMatch` per nodule.
        ci: bootstrap intervals (``sensitivity_lower/upper``, ``cpm_lower/upper``, ``curve_fps``,
            ``curve_lower/upper``, ``n_bootstrap``, ``n_valid``, ``percentiles``), or ``None``.
        n_detected: nodules with at least one hit among the kept candidates.
        n_candidates: candidates kept after the per-scan limit.
        n_false_positives: candidates that hit neither a nodule nor an excluded finding.
        n_ignored: candidates ignored because they hit only excluded findings.
    """

    fps: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray
    fp_rates: np.ndarray
    sensitivities: np.ndarray
    cpm: float
    n_nodules: int
    n_scans: int
    records: list[NoduleMatch] = field(default_factory=list, repr=False)
    ci: dict[str, Any] | None = None
    n_detected: int = 0
    n_candidates: int = 0
    n_false_positives: int = 0
    n_ignored: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (NaN and inf written as ``None``)."""

        def floats(values: Iterable[float]) -> list[float | None]:
            return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]

        return {
            "fp_rates": floats(self.fp_rates),
            "sensitivities": floats(self.sensitivities),
            "cpm": floats([self.cpm])[0],
            "n_nodules": int(self.n_nodules),
            "n_scans": int(self.n_scans),
            "n_detected": int(self.n_detected),
            "n_candidates": int(self.n_candidates),
            "n_false_positives": int(self.n_false_positives),
            "n_ignored": int(self.n_ignored),
            "curve": {
                "fps": floats(self.fps),
                "sensitivity": floats(self.sensitivity),
                "thresholds": floats(self.thresholds),
            },
            "ci": None if self.ci is None else {k: floats(v) if isinstance(v, list) else v for k, v in self.ci.items()},
            "records": [r.to_dict() for r in self.records],
        }


def _bootstrap(
    entries: _Entries, nodules_per_scan: np.ndarray, rates: np.ndarray, n: int, rng: np.random.Generator
) -> dict[str, Any] | None:
    n_scans = nodules_per_scan.size
    grid = np.geomspace(rates.min(), rates.max(), _CI_GRID_POINTS)
    x = np.r_[rates, grid]
    rows = []
    for _ in range(n):
        counts = np.bincount(rng.integers(0, n_scans, n_scans), minlength=n_scans)
        n_nodules = int(counts @ nodules_per_scan)
        if n_nodules == 0:  # a resample without nodules has no sensitivity; the official script would give NaN
            continue
        fps, sens, _ = entries.curve(n_scans, n_nodules, counts)
        rows.append(np.interp(x, fps, sens))
    if len(rows) < n:
        logger.warning("FROC bootstrap: %d of %d resamples drew no nodule and were skipped", n - len(rows), n)
    if not rows:
        return None
    arr = np.asarray(rows)
    sens, curve, cpm = arr[:, : rates.size], arr[:, rates.size :], arr[:, : rates.size].mean(axis=1)
    (s_lo, s_hi), (c_lo, c_hi), (p_lo, p_hi) = (np.percentile(a, _CI_PERCENTILES, axis=0) for a in (sens, curve, cpm))
    return {
        "n_bootstrap": n,
        "n_valid": len(rows),
        "percentiles": list(_CI_PERCENTILES),
        "sensitivity_lower": s_lo.tolist(),
        "sensitivity_upper": s_hi.tolist(),
        "cpm_lower": float(p_lo),
        "cpm_upper": float(p_hi),
        "curve_fps": grid.tolist(),
        "curve_lower": c_lo.tolist(),
        "curve_upper": c_hi.tolist(),
    }


def compute_froc(
    candidates: Mapping[str, Any],
    annotations: Mapping[str, Sequence[Nodule]],
    seriesuids: Sequence[str],
    excluded: Mapping[str, Sequence[Nodule]] | None = None,
    *,
    max_candidates_per_scan: int | None = 100,
    fp_rates: Sequence[float] = LUNA16_FP_RATES,
    bootstrap: int = 0,
    seed: int | np.random.Generator = 0,
) -> FROCResult:
    """FROC curve, sensitivities at ``fp_rates`` and CPM by the LUNA16 rules (module docstring).

    Args:
        candidates: ``{seriesuid: ScanCandidates}`` (or ``(world (N, 3), probability (N,))`` pairs), world mm.
        annotations: ``{seriesuid: [Nodule, ...]}`` true nodules; scans outside ``seriesuids`` are ignored.
        seriesuids: every evaluated scan, nodule-free ones included (the FP/scan denominator).
        excluded: ``{seriesuid: [Nodule, ...]}`` excluded findings (diameter ``-1`` = 10 mm), or ``None``.
            Defaults to ``None``.
        max_candidates_per_scan: official per-scan limit; ``None`` or ``<= 0`` keeps all. Defaults to 100.
        fp_rates: FP/scan operating points, all > 0. Defaults to :data:`LUNA16_FP_RATES`.
        bootstrap: number of scan-level bootstrap resamples for 95 % percentile intervals; 0 disables. Defaults to 0.
        seed: seed (or generator) of the bootstrap. Defaults to 0.

    Returns:
        The :class:`FROCResult`.

    Raises:
        ValueError: empty/duplicated ``seriesuids``, candidates for scans not in ``seriesuids``, bad ``fp_rates``
            or negative ``bootstrap``.

    Example:
        >>> cands = {"scan1": ScanCandidates([[0.0, 0.0, 0.0]], [0.9])}
        >>> truth = {"scan1": [Nodule("scan1", (1.0, 0.0, 0.0), 6.0)]}
        >>> compute_froc(cands, truth, ["scan1"]).cpm
        1.0
    """
    rates = np.asarray(fp_rates, dtype=np.float64).reshape(-1)
    if rates.size == 0 or not (np.isfinite(rates).all() and (rates > 0).all()):
        raise ValueError(f"fp_rates must be a non-empty list of FP/scan rates > 0, got {list(fp_rates)}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise ValueError(f"bootstrap must be a number of resamples >= 0 (0 disables it), got {bootstrap!r}")
    scans = match_scans(candidates, annotations, seriesuids, excluded, max_candidates_per_scan=max_candidates_per_scan)
    nodules_per_scan = np.asarray([len(s.records) for s in scans], dtype=np.int64)
    n_scans, n_nodules = len(scans), int(nodules_per_scan.sum())
    entries = _Entries.from_scans(scans)
    fps, sens, thresholds = entries.curve(n_scans, n_nodules)
    ci = None
    if n_nodules == 0:
        logger.warning("FROC: the %d evaluated scan(s) hold no true nodule; sensitivities and CPM are NaN", n_scans)
        sensitivities = np.full(rates.shape, np.nan)
    else:
        sensitivities = np.interp(rates, fps, sens)
        if bootstrap:
            rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
            ci = _bootstrap(entries, nodules_per_scan, rates, int(bootstrap), rng)
    cpm = float(np.mean(sensitivities))
    n_detected = int(sum(s.tp_probability.size for s in scans))
    n_fp = int(sum(s.fp_probability.size for s in scans))
    logger.info(
        "FROC: %d scans, %d nodules, %d detected, %d FPs (%.2f/scan), CPM %.4f",
        n_scans,
        n_nodules,
        n_detected,
        n_fp,
        n_fp / n_scans,
        cpm,
    )
    return FROCResult(
        fps=fps,
        sensitivity=sens,
        thresholds=thresholds,
        fp_rates=rates,
        sensitivities=sensitivities,
        cpm=cpm,
        n_nodules=n_nodules,
        n_scans=n_scans,
        records=[r for s in scans for r in s.records],
        ci=ci,
        n_detected=n_detected,
        n_candidates=int(sum(s.n_candidates for s in scans)),
        n_false_positives=n_fp,
        n_ignored=int(sum(s.n_ignored for s in scans)),
    )
