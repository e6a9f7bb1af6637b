"""``pivot classify``: re-scoring any LUNA16 candidates file with the false-positive-reduction classifier.

LUNA16's false-positive-reduction track hands out candidate positions (``candidates.csv``:
``seriesuid,coordX,coordY,coordZ,class``) and scores a ``probability`` per candidate; a detection submission has the
probability already. :func:`classify_candidates` reads either, preprocesses each scan as inference does, scores every
candidate with the :class:`~pivot_monai.inference.fpr.CandidateClassifier` and writes the re-scored file, sorted per
scan by the new probability (fused with the detector's as :func:`~pivot_monai.inference.fpr.fuse_probability`, or
the classifier's own when the file has none).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from pivot_monai.data.preprocess import PreprocessConfig, preprocess_image, read_for_preprocessing
from pivot_monai.inference.fpr import CandidateClassifier
from pivot_monai.metrics.froc import SUBMISSION_COLUMNS, candidates_from_rows, write_submission_csv
from pivot_monai.metrics.matching import ScanCandidates

__all__ = ["classify_candidates", "read_candidates_csv"]

logger = logging.getLogger(__name__)


def read_candidates_csv(path: str | Path) -> tuple[dict[str, ScanCandidates], bool]:
    """A LUNA16 candidates file: a submission CSV, or the FP-reduction track's ``candidates.csv`` without a
    ``probability`` column (``seriesuid,coordX,coordY,coordZ,class``).

    Returns:
        (``{seriesuid: ScanCandidates}`` in file order, whether the file had probabilities; without them every
        probability reads 1.0).

    Raises:
        FileNotFoundError: no such file.
        ValueError: missing coordinate columns or malformed values (the message names the file and line).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: candidates file not found (expected {','.join(SUBMISSION_COLUMNS)})")
    with p.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
        fields = list(rows[0]) if rows else []
    has_prob = "probability" in fields
    missing = [c for c in SUBMISSION_COLUMNS[:4] if c not in fields]
    if rows and missing:
        raise ValueError(f"{p}: missing column(s) {missing}; expected header {','.join(SUBMISSION_COLUMNS)}")
    if not has_prob:
        rows = [{**r, "probability": "1"} for r in rows]
    try:
        return candidates_from_rows(rows), has_prob
    except ValueError as err:
        raise ValueError(f"{p}: {err}") from err


def classify_candidates(
    candidates: str | Path,
    inputs: Any,
    output: str | Path,
    classifier: CandidateClassifier,
    preprocess: PreprocessConfig | None = None,
    weight: float | None = None,
) -> dict[str, Any]:
    """Re-score a LUNA16 candidates file with the classifier; write the re-scored ``candidates.csv``.

    Each scan named in the file is found among ``inputs`` by seriesuid, preprocessed as for inference, and its
    candidates are re-scored (fused as :func:`fuse_probability`; a file without probabilities gets the classifier's
    own, ``w = 1``).

    Args:
        candidates: the candidates CSV.
        inputs: scan files, DICOM folders or folders of them (as ``pivot infer``).
        output: output folder (``candidates.csv`` and ``classify_report.json`` inside), or a ``.csv`` file path.
        classifier: the loaded classifier.
        preprocess: the ``data`` section's preprocessing (must match the classifier's training). Default: defaults.
        weight: fusion weight; ``None`` uses the classifier's.

    Returns:
        The report: ``ok``, ``failed`` (``seriesuid``, ``error``), ``candidates_csv``, ``fusion_weight``.
    """
    from pivot_monai.inference.pipeline import scan_datalist

    scans, has_prob = read_candidates_csv(candidates)
    w = 1.0 if not has_prob else (classifier.fusion_weight if weight is None else float(weight))
    cfg = preprocess or PreprocessConfig()
    paths = {item["seriesuid"]: item["image"] for item in scan_datalist(inputs)}
    out = Path(output)
    csv_path = out if out.suffix.lower() == ".csv" else out / "candidates.csv"
    rescored: dict[str, ScanCandidates] = {}
    report: dict[str, Any] = {"ok": [], "failed": [], "fusion_weight": w}
    for uid, cands in scans.items():
        if uid not in paths:
            report["failed"].append({"seriesuid": uid, "error": f"{uid}: no scan with this seriesuid in {inputs}"})
            logger.error("%s: no scan with this seriesuid among the inputs; its candidates are left out", uid)
            continue
        try:
            scan = preprocess_image(read_for_preprocessing(paths[uid], cfg), cfg)
            rescored[uid], _ = classifier.rescore(scan.image, scan.geometry, cands, w)
        except Exception as err:  # noqa: BLE001 - one broken scan must never stop the others
            report["failed"].append({"seriesuid": uid, "error": f"{paths[uid]}: {type(err).__name__}: {err}"})
            logger.error("%s: %s: %s", paths[uid], type(err).__name__, err)
            continue
        report["ok"].append(uid)
    write_submission_csv(csv_path, rescored)
    report["candidates_csv"] = str(csv_path)
    (csv_path.parent / "classify_report.json").write_text(json.dumps(report, indent=1))
    logger.info("re-scored %d scan(s), %d failed -> %s", len(report["ok"]), len(report["failed"]), csv_path)
    return report
