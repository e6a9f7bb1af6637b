"""Discovery of a raw LUNA16-style dataset and the parallel, resumable preprocessing run over it."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pivot_monai.data.annotations import Nodule, read_annotations, read_seriesuids
from pivot_monai.data.io import find_scans, seriesuid_from_path
from pivot_monai.data.preprocess import PreprocessConfig, ScanError, preprocess_scan
from pivot_monai.files import atomic_write_text
from pivot_monai.logs import progress

__all__ = ["RawDataset", "discover_raw_dataset", "preprocess_dataset", "REPORT_NAME"]

logger = logging.getLogger(__name__)

REPORT_NAME = "preprocess_report.json"


@dataclass
class RawDataset:
    """A raw dataset: scans plus LUNA16 CSVs.

    Attributes:
        scans: seriesuid -> scan path.
        annotations: seriesuid -> nodules (``annotations.csv``).
        excluded: seriesuid -> excluded findings (``annotations_excluded.csv``).
        seriesuids: the seriesuid list if one was found, else ``None``.
        subsets: seriesuid -> LUNA16 ``subsetN`` folder name (or ``""``).
    """

    scans: dict[str, Path]
    annotations: dict[str, list[Nodule]] = field(default_factory=dict)
    excluded: dict[str, list[Nodule]] = field(default_factory=dict)
    seriesuids: list[str] | None = None
    subsets: dict[str, str] = field(default_factory=dict)


def _find_csv(root: Path, name: str) -> Path | None:
    direct = root / name
    if direct.exists():
        return direct
    hits = sorted(root.rglob(name))
    return hits[0] if hits else None


def discover_raw_dataset(
    input_dir: str | Path,
    annotations: str | Path | None = None,
    excluded: str | Path | None = None,
    seriesuids: str | Path | None = None,
) -> RawDataset:
    """Find scans and CSVs below ``input_dir`` (CSV paths may be given explicitly).

    Raises:
        FileNotFoundError: ``input_dir`` missing or holding no scans.
    """
    root = Path(input_dir)
    paths = find_scans(root)
    if not paths:
        raise FileNotFoundError(
            f"{root}: no CT scans found (expected .mhd/.raw, .nii/.nii.gz or DICOM folders, "
            f"e.g. LUNA16 subsetN/<seriesuid>.mhd)"
        )
    scans: dict[str, Path] = {}
    subsets: dict[str, str] = {}
    for p in paths:
        uid = seriesuid_from_path(p)
        if uid in scans:
            logger.warning("duplicate seriesuid %s: %s ignored, keeping %s", uid, p, scans[uid])
            continue
        scans[uid] = p
        subsets[uid] = (
            next((part for part in p.relative_to(root).parts[:-1] if part.startswith("subset")), "")
            if p != root
            else ""
        )
    ann_path = Path(annotations) if annotations else _find_csv(root, "annotations.csv")
    exc_path = Path(excluded) if excluded else _find_csv(root, "annotations_excluded.csv")
    uid_path = Path(seriesuids) if seriesuids else _find_csv(root, "seriesuids.csv")
    if ann_path is None:
        logger.warning("%s: no annotations.csv found; all scans are treated as nodule-free", root)
    return RawDataset(
        scans=scans,
        annotations=read_annotations(ann_path) if ann_path else {},
        excluded=read_annotations(exc_path, excluded=True) if exc_path else {},
        seriesuids=read_seriesuids(uid_path) if uid_path else None,
        subsets=subsets,
    )


def _is_done(out_dir: Path, uid: str, cfg: PreprocessConfig) -> bool:
    meta = out_dir / uid / "meta.json"
    if not meta.exists():
        return False
    try:
        return json.loads(meta.read_text()).get("preprocess_config") == cfg.to_dict()
    except (OSError, json.JSONDecodeError):
        return False


def _run_one(args: tuple) -> tuple[str, str, str, float]:
    uid, path, nodules, excluded, out_dir, cfg, extra = args
    t0 = time.perf_counter()
    try:
        preprocess_scan(path, uid, nodules, excluded, out_dir, cfg, extra)
        return uid, "ok", "", time.perf_counter() - t0
    except ScanError as err:
        return uid, "failed", str(err), time.perf_counter() - t0
    except Exception as err:  # noqa: BLE001 - one broken scan must never stop the others
        return uid, "failed", f"{path}: {type(err).__name__}: {err}", time.perf_counter() - t0


def preprocess_dataset(
    input_dir: str | Path,
    output_dir: str | Path,
    cfg: PreprocessConfig,
    *,
    workers: int = 1,
    overwrite: bool = False,
    annotations: str | Path | None = None,
) -> dict[str, Any]:
    """Preprocess every scan of a raw dataset, in parallel, resuming where a previous run stopped.

    One broken scan never stops the others: its error (naming the file) goes to the log and to
    ``<output_dir>/preprocess_report.json``.

    Args:
        input_dir: raw dataset root (LUNA16 layout: ``subsetN/*.mhd`` and CSVs).
        output_dir: where ``<seriesuid>/{image,label}.nii.gz`` and ``meta.json`` are written.
        cfg: preprocessing settings.
        workers: worker processes (1 = in this process). Default 1.
        overwrite: redo scans that are already done. Default False.
        annotations: explicit ``annotations.csv`` path.

    Returns:
        The report: ``{"ok": [...], "skipped": [...], "failed": [{"seriesuid", "error"}], "seconds": {...}}``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = discover_raw_dataset(input_dir, annotations=annotations)
    report: dict[str, Any] = {"ok": [], "skipped": [], "failed": [], "seconds": {}, "config": cfg.to_dict()}
    jobs = []
    known = set(raw.seriesuids) if raw.seriesuids is not None else None
    for uid, path in raw.scans.items():
        if known is not None and uid not in known:
            msg = f"{path}: seriesuid {uid} is not in the dataset's seriesuid list; add it or remove the scan"
            report["failed"].append({"seriesuid": uid, "error": msg})
            logger.error(msg)
            continue
        if not overwrite and _is_done(out, uid, cfg):
            report["skipped"].append(uid)
            continue
        extra = {"subset": raw.subsets.get(uid, "")}
        jobs.append((uid, path, raw.annotations.get(uid, []), raw.excluded.get(uid, []), out, cfg, extra))
    orphans = sorted(set(raw.annotations) - set(raw.scans))
    if orphans:
        logger.warning(
            "%d annotated seriesuid(s) have no scan under %s (other subsets, or a typo in annotations.csv?): %s%s",
            len(orphans),
            input_dir,
            ", ".join(orphans[:5]),
            ", ..." if len(orphans) > 5 else "",
        )
    bar = progress(total=len(jobs), desc="preprocess", unit="scan", logger=logger)
    if workers <= 1:
        results = (_run_one(j) for j in jobs)
        _collect(results, report, bar)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            _collect((f.result() for f in as_completed([pool.submit(_run_one, j) for j in jobs])), report, bar)
    bar.close()
    report["ok"].sort()
    atomic_write_text(out / REPORT_NAME, json.dumps(report, indent=1))
    logger.info(
        "preprocessed %d, skipped %d (already done), failed %d -> %s",
        len(report["ok"]),
        len(report["skipped"]),
        len(report["failed"]),
        out / REPORT_NAME,
    )
    return report


def _collect(results, report: dict[str, Any], bar: Any) -> None:
    for uid, status, err, seconds in results:
        bar.update(1)
        report["seconds"][uid] = round(seconds, 3)
        if status == "ok":
            report["ok"].append(uid)
            logger.debug("%s done in %.2f s", uid, seconds)
        else:
            report["failed"].append({"seriesuid": uid, "error": err})
            logger.error("%s", err)
