"""Candidate-to-nodule matching under the LUNA16 rules, in plain numpy (no ignite).

* a candidate *hits* a finding when its squared distance to the finding's centre is strictly below
  ``(diameter / 2) ** 2``; a diameter below 0 (LUNA16's "unknown", ``-1``) counts as 10 mm;
* per scan only the ``max_candidates_per_scan`` most probable candidates are kept, exactly as the official script
  does it: every candidate whose probability is strictly above the (K+1)-th highest probability is kept, so
  candidates tied with that value are all dropped;
* each true nodule is represented by its *best hit*, the hit with the highest probability (the first such candidate
  in input order on ties); a candidate hitting several nodules is a hit for each of them;
* a candidate that hits no true nodule but an excluded finding is ignored; every other candidate is a false positive.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pivot_monai.data.annotations import Nodule, world_array

__all__ = [
    "UNKNOWN_DIAMETER_MM",
    "NoduleMatch",
    "ScanCandidates",
    "ScanMatch",
    "match_candidates",
    "match_scan",
    "match_scans",
]

logger = logging.getLogger(__name__)

UNKNOWN_DIAMETER_MM = 10.0


def _vector(value: Any, name: str, n: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"ScanCandidates.{name} must have shape ({n},) to match world (N={n}), got {np.shape(value)}")
    return arr


@dataclass(eq=False)
class ScanCandidates:
    """The detector's candidates on one scan.

    Attributes:
        world: (N, 3) candidate centres in world mm (x, y, z), LPS.
        probability: (N,) detection probability (any monotone score works; only the order matters for FROC).
        diameter_mm: (N,) predicted diameter in mm, or ``None``; NaN marks a missing value.
        malignancy: (N,) predicted malignancy probability in [0, 1], or ``None``; NaN marks a missing value.

    Raises:
        ValueError: wrong shapes, or non-finite coordinates or probabilities.
    """

    world: np.ndarray
    probability: np.ndarray
    diameter_mm: np.ndarray | None = None
    malignancy: np.ndarray | None = None

    def __post_init__(self) -> None:
        world = np.asarray(self.world, dtype=np.float64)
        if world.size == 0:
            world = world.reshape(0, 3)
        if world.ndim != 2 or world.shape[1] != 3:
            raise ValueError(
                f"ScanCandidates.world must be an (N, 3) array of world mm (x, y, z), got shape {world.shape}"
            )
        n = world.shape[0]
        self.world = world
        self.probability = _vector(self.probability, "probability", n)
        if not (np.isfinite(world).all() and np.isfinite(self.probability).all()):
            raise ValueError("ScanCandidates.world and .probability must be finite; drop or fix NaN/inf candidates")
        for name in ("diameter_mm", "malignancy"):
            if getattr(self, name) is not None:
                setattr(self, name, _vector(getattr(self, name), name, n))

    def __len__(self) -> int:
        return int(self.world.shape[0])

    @classmethod
    def coerce(cls, value: Any, name: str = "candidates") -> ScanCandidates:
        """``value`` itself when it is a :class:`ScanCandidates`, else built from a ``(world, probability)`` pair.

        Raises:
            TypeError: anything else; ``name`` labels the value in the message.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return cls(value[0], value[1])
        raise TypeError(
            f"{name} must be a ScanCandidates or a (world (N, 3), probability (N,)) pair, got {type(value).__name__}"
        )


@dataclass(frozen=True)
class NoduleMatch:
    """One true nodule and its best hit.

    Attributes:
        seriesuid: scan identifier.
        nodule_index: position of the nodule in ``annotations[seriesuid]``.
        hit: at least one kept candidate lies strictly within the nodule radius.
        probability: probability of the best hit, ``None`` when missed.
        distance_mm: distance (mm) from the nodule centre to the best hit, ``None`` when missed.
        candidate_index: index of the best hit in the scan's :class:`ScanCandidates` (input order), ``None`` if
            missed.
        diameter_mm: true diameter (mm).
        malignancy: true LIDC rating 1-5, ``None`` when unrated.
        predicted_diameter_mm: best hit's predicted diameter, ``None`` when missed or not predicted.
        predicted_malignancy: best hit's predicted malignancy probability, ``None`` when missed or not predicted.
    """

    seriesuid: str
    nodule_index: int
    hit: bool
    probability: float | None
    distance_mm: float | None
    candidate_index: int | None
    diameter_mm: float
    malignancy: float | None = None
    predicted_diameter_mm: float | None = None
    predicted_malignancy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class ScanMatch:
    """Matching outcome of one scan.

    Attributes:
        seriesuid: scan identifier.
        records: one :class:`NoduleMatch` per true nodule, in annotation order.
        tp_probability: (n_detected,) best-hit probability of each detected nodule (the FROC true positives).
        fp_probability: (n_fp,) probabilities of the false-positive candidates.
        n_candidates: candidates kept after the per-scan limit.
        n_ignored: candidates ignored because they hit only excluded findings.
        n_double: hits beyond the best one on a nodule (neither TP nor FP).
    """

    seriesuid: str
    records: tuple[NoduleMatch, ...]
    tp_probability: np.ndarray
    fp_probability: np.ndarray
    n_candidates: int
    n_ignored: int
    n_double: int


def _radius_squared(diameters: np.ndarray) -> np.ndarray:
    d = np.where(diameters < 0.0, UNKNOWN_DIAMETER_MM, diameters)
    return (d / 2.0) ** 2


def _squared_distances(centres: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(n, m) squared distances, summed per axis in x, y, z order like the official script."""
    diff = centres[:, None, :] - points[None, :, :]
    return diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]


def _keep_most_probable(probability: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices (ascending) kept by the official rule: probability strictly above the (limit+1)-th highest."""
    if limit is None or limit <= 0 or probability.size <= limit:
        return np.arange(probability.size)
    cut = np.sort(probability)[::-1][limit]
    return np.flatnonzero(probability > cut)


def _optional(values: np.ndarray | None, index: int) -> float | None:
    if values is None or not math.isfinite(values[index]):
        return None
    return float(values[index])


def match_scan(
    seriesuid: str,
    candidates: ScanCandidates | None,
    nodules: Sequence[Nodule],
    excluded: Sequence[Nodule] = (),
    *,
    max_candidates_per_scan: int | None = 100,
) -> ScanMatch:
    """Match one scan's candidates to its true nodules and excluded findings (rules in the module docstring).

    Args:
        seriesuid: scan identifier, copied into the records.
        candidates: the scan's candidates; ``None`` means none.
        nodules: true nodules of the scan.
        excluded: excluded findings of the scan (diameter ``-1`` counts as 10 mm). Defaults to none.
        max_candidates_per_scan: keep at most this many candidates; ``None`` or ``<= 0`` keeps all. Defaults to 100.

    Returns:
        The :class:`ScanMatch` of the scan.
    """
    cands = candidates if candidates is not None else ScanCandidates(np.zeros((0, 3)), np.zeros(0))
    kept = _keep_most_probable(cands.probability, max_candidates_per_scan)
    points, prob = cands.world[kept], cands.probability[kept]
    d2 = _squared_distances(world_array(list(nodules)), points)
    hits = d2 < _radius_squared(np.asarray([n.diameter_mm for n in nodules], dtype=np.float64))[:, None]
    on_excluded = np.zeros(kept.size, dtype=bool)
    if len(excluded):
        ex_r2 = _radius_squared(np.asarray([n.diameter_mm for n in excluded], dtype=np.float64))
        on_excluded = (_squared_distances(world_array(list(excluded)), points) < ex_r2[:, None]).any(axis=0)
    on_nodule = hits.any(axis=0)

    records, tp = [], []
    for i, nodule in enumerate(nodules):
        truth = {
            "seriesuid": seriesuid,
            "nodule_index": i,
            "diameter_mm": float(nodule.diameter_mm),
            "malignancy": nodule.malignancy,
        }
        idx = np.flatnonzero(hits[i])
        if idx.size == 0:
            records.append(NoduleMatch(hit=False, probability=None, distance_mm=None, candidate_index=None, **truth))
            continue
        best = int(idx[np.argmax(prob[idx])])  # argmax takes the first maximum: input order on ties
        j = int(kept[best])
        tp.append(prob[best])
        records.append(
            NoduleMatch(
                hit=True,
                probability=float(prob[best]),
                distance_mm=math.sqrt(d2[i, best]),
                candidate_index=j,
                predicted_diameter_mm=_optional(cands.diameter_mm, j),
                predicted_malignancy=_optional(cands.malignancy, j),
                **truth,
            )
        )
    n_double = int(np.maximum(hits.sum(axis=1) - 1, 0).sum()) if len(nodules) else 0
    fp, ignored = prob[~on_nodule & ~on_excluded], int((~on_nodule & on_excluded).sum())
    return ScanMatch(seriesuid, tuple(records), np.asarray(tp, dtype=np.float64), fp, int(kept.size), ignored, n_double)


def match_scans(
    candidates: Mapping[str, Any],
    annotations: Mapping[str, Sequence[Nodule]],
    seriesuids: Sequence[str],
    excluded: Mapping[str, Sequence[Nodule]] | None = None,
    *,
    max_candidates_per_scan: int | None = 100,
) -> list[ScanMatch]:
    """:func:`match_scan` over every scan in ``seriesuids``, after checking the inputs.

    Args:
        candidates: ``{seriesuid: ScanCandidates}`` (a ``(world, probability)`` pair is accepted too).
        annotations: ``{seriesuid: [Nodule, ...]}``; scans outside ``seriesuids`` are ignored, as in LUNA16.
        seriesuids: every evaluated scan, nodule-free ones included.
        excluded: ``{seriesuid: [Nodule, ...]}`` excluded findings, or ``None``. Defaults to ``None``.
        max_candidates_per_scan: see :func:`match_scan`. Defaults to 100.

    Returns:
        One :class:`ScanMatch` per seriesuid, in ``seriesuids`` order.

    Raises:
        ValueError: empty or duplicated ``seriesuids``, or candidates for scans not in ``seriesuids``.
        TypeError: a candidates value of the wrong type.
    """
    uids = [str(u) for u in seriesuids]
    if not uids:
        raise ValueError("seriesuids is empty: pass every evaluated scan (nodule-free ones included)")
    if len(set(uids)) != len(uids):
        dup = sorted({u for u in uids if uids.count(u) > 1})
        raise ValueError(f"seriesuids must be unique, got duplicates {dup[:5]}{' ...' if len(dup) > 5 else ''}")
    known = set(uids)
    unknown = sorted(set(candidates) - known)
    if unknown:
        raise ValueError(
            f"candidates for {len(unknown)} scan(s) not in seriesuids: {unknown[:5]}"
            f"{' ...' if len(unknown) > 5 else ''}; add them to seriesuids or drop their candidates"
        )
    skipped = len(set(annotations) - known)
    if skipped:
        logger.debug("ignoring annotations of %d scan(s) not in seriesuids", skipped)
    excluded = excluded or {}
    scans = []
    for u in uids:
        cands = ScanCandidates.coerce(candidates[u], f"candidates[{u!r}]") if u in candidates else None
        scans.append(
            match_scan(
                u, cands, annotations.get(u, ()), excluded.get(u, ()), max_candidates_per_scan=max_candidates_per_scan
            )
        )
    return scans


def match_candidates(
    candidates: Mapping[str, Any],
    annotations: Mapping[str, Sequence[Nodule]],
    seriesuids: Sequence[str] | None = None,
    excluded: Mapping[str, Sequence[Nodule]] | None = None,
    *,
    max_candidates_per_scan: int | None = 100,
) -> list[NoduleMatch]:
    """Per-nodule best hits over many scans: the records the metrics below consume.

    Args:
        candidates: ``{seriesuid: ScanCandidates}``.
        annotations: ``{seriesuid: [Nodule, ...]}``.
        seriesuids: evaluated scans. Defaults to every uid in ``annotations`` or ``candidates``, sorted.
        excluded: excluded findings per scan, or ``None``. Defaults to ``None``.
        max_candidates_per_scan: see :func:`match_scan`. Defaults to 100.

    Returns:
        One :class:`NoduleMatch` per true nodule, grouped by scan in ``seriesuids`` order.

    Raises:
        ValueError: as :func:`match_scans`.
    """
    uids = sorted(set(annotations) | set(candidates)) if seriesuids is None else seriesuids
    scans = match_scans(candidates, annotations, uids, excluded, max_candidates_per_scan=max_candidates_per_scan)
    return [rec for scan in scans for rec in scan.records]
