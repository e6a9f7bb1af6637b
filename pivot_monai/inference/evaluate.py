"""Evaluation of a trained detector on held-out scans: LUNA16 FROC/CPM with bootstrap CIs and per-nodule results.

Every scan goes through the full inference pipeline from its **raw** file (reading, preprocessing, sliding window,
decoding), so the numbers cover preprocessing too. ``data_dir`` is either

* a processed split folder (``data/processed/test``: ``<uid>/meta.json`` + ``image.nii.gz`` + ``label.nii.gz``):
  the raw scan is ``meta["source"]``, the truth ``meta["nodules"]`` / ``meta["excluded"]`` (world mm), and the
  detection Dice is measured on ``label.nii.gz``; or
* a raw LUNA16-style folder (scans + ``annotations.csv``, ``annotations_excluded.csv``, ``seriesuids.csv``), where
  the detection Dice is not available (``null``).

Outputs in ``output_dir``: ``metrics.json``, ``froc.png``, ``candidates.csv``, ``per_nodule.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pivot_monai.data.annotations import Nodule
from pivot_monai.data.geometry import Geometry
from pivot_monai.data.raw_dataset import discover_raw_dataset
from pivot_monai.inference.pipeline import InferencePipeline
from pivot_monai.inference.postprocess import sphere_mask
from pivot_monai.inference.predictor import Predictor
from pivot_monai.inference.settings import InferenceSettings
from pivot_monai.metrics import (
    LUNA16_FP_RATES,
    ScanCandidates,
    compute_froc,
    detection_dice,
    summarize_detection,
    write_submission_csv,
)

__all__ = ["EvalCase", "PER_NODULE_COLUMNS", "discover_cases", "evaluate", "scan_detection_dice", "write_per_nodule"]

logger = logging.getLogger(__name__)

PER_NODULE_COLUMNS = (
    "seriesuid", "nodule_index", "coordX", "coordY", "coordZ", "diameter_mm", "malignancy", "hit", "distance_mm",
    "score", "predicted_diameter_mm", "size_error_mm", "predicted_malignancy",
)  # fmt: skip


@dataclass
class EvalCase:
    """One evaluated scan: the raw file, its truth and (for processed splits) its label volume."""

    seriesuid: str
    scan: Path
    nodules: list[Nodule] = field(default_factory=list)
    excluded: list[Nodule] = field(default_factory=list)
    label: Path | None = None


def _nodules(uid: str, records: list[Mapping[str, Any]]) -> list[Nodule]:
    return [
        Nodule(uid, tuple(float(v) for v in r["world"]), float(r["diameter_mm"]), r.get("malignancy")) for r in records
    ]


def discover_cases(data_dir: str | Path) -> list[EvalCase]:
    """The scans of a processed split folder (``<uid>/meta.json``) or of a raw LUNA16-style folder.

    Raises:
        FileNotFoundError: ``data_dir`` does not exist or holds no scans.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: evaluation data folder not found (expected a processed split such as "
            f"data/processed/test, or a raw folder with annotations.csv)"
        )
    metas = sorted(root.glob("*/meta.json"))
    if metas:
        cases = []
        for meta_path in metas:
            meta = json.loads(meta_path.read_text())
            uid = str(meta.get("seriesuid", meta_path.parent.name))
            if "source" not in meta:
                raise ValueError(f"{meta_path}: no 'source' (raw scan path); re-run `pivot preprocess`")
            label = meta_path.parent / "label.nii.gz"
            if not Path(meta["source"]).exists():
                logger.warning(
                    "%s: raw scan %s ('source') not found; run from the folder `pivot preprocess` ran in, or "
                    "re-run it with absolute paths",
                    meta_path,
                    meta["source"],
                )
            cases.append(
                EvalCase(
                    uid,
                    Path(meta["source"]),
                    _nodules(uid, meta.get("nodules", [])),
                    _nodules(uid, meta.get("excluded", [])),
                    label if label.exists() else None,
                )
            )
        logger.info("%s: processed split with %d scans (raw scans from meta.json 'source')", root, len(cases))
        return cases
    raw = discover_raw_dataset(root)
    uids = [u for u in raw.scans if raw.seriesuids is None or u in set(raw.seriesuids)]
    logger.info("%s: raw dataset with %d scans, %d annotated", root, len(uids), sum(u in raw.annotations for u in uids))
    return [EvalCase(u, raw.scans[u], raw.annotations.get(u, []), raw.excluded.get(u, [])) for u in uids]


def scan_detection_dice(label_path: Path, candidates: ScanCandidates, threshold: float = 0.5) -> float:
    """Voxel Dice between spheres of the candidates with probability >= ``threshold`` and the nodule label spheres.

    Both are drawn on the label's (processed) grid, from world mm, so spacing and direction are accounted for.
    """
    image = sitk.ReadImage(str(label_path))
    geom = Geometry.from_sitk(image)
    true = sitk.GetArrayFromImage(image).transpose(2, 1, 0) > 0
    keep = candidates.probability >= threshold
    diam = candidates.diameter_mm if candidates.diameter_mm is not None else np.zeros(len(candidates))
    centres = geom.world_to_index(candidates.world[keep]).reshape(-1, 3)
    pred = sphere_mask(true.shape, centres, np.nan_to_num(diam[keep]), geom.spacing)
    return detection_dice(pred, true)


def write_per_nodule(path: Path, records: list, annotations: Mapping[str, list[Nodule]]) -> Path:
    """``per_nodule.csv``: one row per true nodule with its best hit (``size_error_mm`` = predicted - true)."""

    def fmt(v: Any) -> Any:
        return "" if v is None else (f"{v:.4f}" if isinstance(v, float) else v)

    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(PER_NODULE_COLUMNS)
        for r in records:
            world = annotations[r.seriesuid][r.nodule_index].world
            err = None if r.predicted_diameter_mm is None else r.predicted_diameter_mm - r.diameter_mm
            writer.writerow(
                [
                    r.seriesuid,
                    r.nodule_index,
                    *(fmt(float(v)) for v in world),
                    fmt(r.diameter_mm),
                    fmt(r.malignancy),
                    int(r.hit),
                    fmt(r.distance_mm),
                    fmt(r.probability),
                    fmt(r.predicted_diameter_mm),
                    fmt(err),
                    fmt(r.predicted_malignancy),
                ]
            )
    return path


def _predict_cases(
    pipeline: InferencePipeline, cases: list[EvalCase], threshold: float | None
) -> tuple[dict[str, ScanCandidates], dict[str, float], list[dict[str, str]]]:
    """Candidates per scan, the detection Dice of scans with a label, and the failed scans (never raises)."""
    items = [{"image": str(c.scan), "seriesuid": c.seriesuid} for c in cases]
    labels = {c.seriesuid: c.label for c in cases}
    candidates: dict[str, ScanCandidates] = {}
    dice: dict[str, float] = {}
    failed = []
    for item, result in pipeline.predict_many(items):
        if isinstance(result, str):
            failed.append({"seriesuid": item["seriesuid"], "path": item["image"], "error": result})
            continue
        candidates[result.seriesuid] = result.candidates
        label = labels[result.seriesuid]
        if label is not None and threshold is not None:
            dice[result.seriesuid] = scan_detection_dice(label, result.candidates, threshold)
    return candidates, dice, failed


def evaluate(
    model: Any,
    data_dir: str | Path,
    output_dir: str | Path,
    settings: InferenceSettings | None = None,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    threshold: float | None = 0.5,
    max_candidates_per_scan: int = 100,
    classifier: Any = None,
) -> dict[str, Any]:
    """Run the detector over ``data_dir``; write ``metrics.json``, ``froc.png``, ``candidates.csv``, ``per_nodule.csv``.

    Args:
        model: ``.pt`` checkpoint (built with ``settings.model``), ``.ts``, ``.onnx`` or a network/callable.
        data_dir: processed split folder or raw LUNA16-style folder (module docstring).
        output_dir: output folder.
        settings: the run's settings (:meth:`~pivot_monai.inference.settings.InferenceSettings.from_config`).
            Default: the defaults on the CPU.
        bootstrap: scan-level bootstrap resamples for the 95 % CIs (seeded); 0 disables. Default 1000.
        seed: bootstrap seed. Default 0.
        threshold: operating probability of the per-nodule metrics and of the detection Dice spheres. Default 0.5.
        max_candidates_per_scan: LUNA16 per-scan candidate limit. Default 100.
        classifier: the false-positive-reduction classifier that re-scores every scan's candidates
            (:func:`~pivot_monai.inference.fpr.resolve_classifier`), or ``None``. Default None.

    Returns:
        The metrics (as in ``metrics.json``): ``cpm``, ``sensitivity@<rate>``, ``cpm_ci``/``sensitivity_ci``,
        ``detection_dice``, ``center_accuracy``, ``size_mae_mm``, ``malignancy_auc``, counts, ``failed`` scans.

    Raises:
        FileNotFoundError: ``data_dir`` or the model file does not exist.
        RuntimeError: every scan failed.
    """
    from pivot_monai.metrics.plots import plot_froc  # matplotlib, only here

    out = Path(output_dir)
    cases = discover_cases(data_dir)
    settings = settings or InferenceSettings()
    pipeline = InferencePipeline(Predictor.from_settings(model, settings), settings, classifier=classifier)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    candidates, dice, failed = _predict_cases(pipeline, cases, threshold)
    if not candidates:
        raise RuntimeError(f"all {len(cases)} scan(s) of {data_dir} failed; first error: {failed[0]['error']}")
    by_uid = {c.seriesuid: c for c in cases}
    uids = list(candidates)
    annotations = {u: by_uid[u].nodules for u in uids}
    froc = compute_froc(
        candidates,
        annotations,
        uids,
        {u: by_uid[u].excluded for u in uids},
        max_candidates_per_scan=max_candidates_per_scan,
        bootstrap=int(bootstrap),
        seed=seed,
    )
    metrics = summarize_detection(froc, threshold=threshold, rating_threshold=settings.preprocess.malignancy_threshold)
    metrics["detection_dice"] = float(np.mean(list(dice.values()))) if dice else None
    metrics.update(
        fp_rates=list(LUNA16_FP_RATES),
        bootstrap=int(bootstrap),
        seed=int(seed),
        n_failed=len(failed),
        failed=failed,
        data_dir=str(data_dir),
        model=str(model) if isinstance(model, (str, Path)) else type(model).__name__,
        settings=pipeline.settings(),
        seconds=round(time.perf_counter() - t0, 3),
    )
    write_submission_csv(out / "candidates.csv", candidates)
    write_per_nodule(out / "per_nodule.csv", froc.records, annotations)
    plot_froc(froc, out / "froc.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    logger.info(
        "evaluated %d scan(s) (%d failed): CPM %s, detection Dice %s -> %s",
        len(uids),
        len(failed),
        metrics["cpm"],
        metrics["detection_dice"],
        out / "metrics.json",
    )
    return metrics
