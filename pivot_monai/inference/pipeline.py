"""Whole-scan inference: raw CT in, LUNA16 candidates (world mm) out.

Per scan, the same code path as training data: :func:`~pivot_monai.data.io.read_sitk` ->
:func:`~pivot_monai.data.preprocess.preprocess_image` (lung crop, resampling, HU window) -> :class:`Predictor`
(sliding window, optional TTA) -> :func:`~pivot_monai.inference.decode.decode_peaks` ->
:func:`~pivot_monai.inference.decode.output_to_input_index` -> world mm through the processed image's
:class:`~pivot_monai.data.geometry.Geometry` (which lives in the raw scan's world frame).

:func:`infer_scans` writes into ``output_dir``:

* ``candidates.csv``: ``seriesuid,coordX,coordY,coordZ,probability,diameter_mm,malignancy_probability``, readable
  unchanged by the official LUNA16 evaluation script;
* ``infer_report.json``: scans done, scans failed (with the error naming the file), per-scan timings;
* optionally ``<seriesuid>_heatmap.nii.gz`` resampled onto the raw scan (overlays in 3D Slicer / ITK-SNAP) and
  ``previews/<seriesuid>_<rank>.png`` (see :mod:`pivot_monai.inference.previews`).

``python -m pivot_monai.inference.pipeline --checkpoint ... --data-dir ... --output-dir ...`` is the training guide's
``python -m src.eval.pipeline``: it runs ``pivot evaluate`` with the same flags.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from pivot_monai.data.geometry import Geometry
from pivot_monai.data.io import find_scans, seriesuid_from_path, volume_to_sitk
from pivot_monai.data.preprocess import preprocess_image, read_for_preprocessing
from pivot_monai.files import atomic_write_text
from pivot_monai.inference.decode import decode_peaks, output_to_input_index
from pivot_monai.inference.predictor import Predictor
from pivot_monai.inference.settings import InferenceSettings
from pivot_monai.logs import progress
from pivot_monai.metrics.detection import ScanCandidates
from pivot_monai.metrics.froc import write_submission_csv

__all__ = [
    "CANDIDATES_NAME",
    "REPORT_NAME",
    "InferencePipeline",
    "ScanPrediction",
    "heatmap_on_raw_grid",
    "infer_scans",
    "scan_datalist",
]

logger = logging.getLogger(__name__)

CANDIDATES_NAME = "candidates.csv"
REPORT_NAME = "infer_report.json"


@dataclass
class ScanPrediction:
    """Inference result of one scan.

    Attributes:
        seriesuid: scan identifier.
        path: the scan file or DICOM folder.
        candidates: candidates in world mm, sorted by probability.
        index: (K, 3) candidate positions as continuous voxel indices of the processed image.
        geometry: geometry of the processed image (raw scan's world frame).
        maps: network maps, each (1, 1, X/s, Y/s, Z/s) on the CPU.
        stride: output stride ``s`` of the maps.
        raw: the raw scan in HU, in its stored pixel type (int16 for LUNA16); ``None`` unless kept (see
            :meth:`InferencePipeline.predict`).
        seconds: timing per stage.
    """

    seriesuid: str
    path: Path
    candidates: ScanCandidates
    index: np.ndarray
    geometry: Geometry
    maps: dict[str, torch.Tensor]
    stride: int
    raw: sitk.Image | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def scan_datalist(inputs: str | Path | Sequence[str | Path | Mapping[str, Any]]) -> list[dict[str, str]]:
    """Items ``{"image": path, "seriesuid": uid}`` for every scan in ``inputs`` (files, DICOM folders, folders).

    Mapping items (``{"image": ...}``, e.g. a MONAI dataset) are passed through.

    Raises:
        FileNotFoundError: an input that does not exist or a folder without scans.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    items: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for entry in inputs:
        if isinstance(entry, Mapping):
            paths = [Path(entry["image"])]
            uids = [str(entry.get("seriesuid") or seriesuid_from_path(paths[0]))]
        else:
            paths = find_scans(entry)  # raises FileNotFoundError for a missing path
            if not paths:
                raise FileNotFoundError(
                    f"{entry}: no CT scans found (expected .mhd/.raw, .nii/.nii.gz, .nrrd or DICOM folders)"
                )
            uids = [seriesuid_from_path(p) for p in paths]
        for p, uid in zip(paths, uids):
            if uid in seen:
                logger.warning("duplicate seriesuid %s: %s ignored, keeping %s", uid, p, seen[uid])
                continue
            seen[uid] = str(p)
            items.append({"image": str(p), "seriesuid": uid})
    return items


def heatmap_on_raw_grid(prediction: ScanPrediction) -> sitk.Image:
    """The heatmap resampled (linear) onto the raw scan's grid, so it overlays the scan in any viewer.

    The map at stride ``s`` is placed on its own grid (voxel ``m`` covers processed voxels ``m*s .. m*s+s-1``, so
    its centre is processed index ``m*s + (s-1)/2``) and resampled onto the raw geometry; outside the lung crop it is 0.
    """
    if prediction.raw is None:
        raise ValueError(f"{prediction.path}: the raw scan is needed to write its heatmap")
    s, g = prediction.stride, prediction.geometry
    heat = prediction.maps["heatmap"][0, 0].numpy().astype(np.float32)
    grid = Geometry(g.index_to_world(np.full(3, (s - 1) / 2.0)), g.spacing * s, g.direction, heat.shape)
    return sitk.Resample(
        volume_to_sitk(heat, grid), prediction.raw, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )


class InferencePipeline:
    """Raw scan -> candidates, with the preprocessing of training and the configured decoding.

    Args:
        predictor: the loaded detector with its sliding window.
        settings: the run's settings (preprocessing, decoding, host tuning). Default: the defaults.
        save_heatmap: write ``<uid>_heatmap.nii.gz`` on the raw grid. Default False.
        save_previews: write ``previews/<uid>_<rank>.png`` for the top candidates. Default False.
        num_previews: candidates previewed per scan. Default 5.
        classifier: the false-positive-reduction classifier that re-scores the candidates
            (:class:`~pivot_monai.inference.fpr.CandidateClassifier`), or ``None`` for the detector's scores. Default
            None.
    """

    def __init__(
        self,
        predictor: Predictor,
        settings: InferenceSettings | None = None,
        *,
        save_heatmap: bool = False,
        save_previews: bool = False,
        num_previews: int = 5,
        classifier: Any = None,
    ) -> None:
        self.predictor, self.classifier = predictor, classifier
        self.config = settings or InferenceSettings()
        self.preprocess, self.decode = self.config.preprocess, self.config.decode
        self.save_heatmap, self.save_previews, self.num_previews = save_heatmap, save_previews, int(num_previews)

    def predict(self, path: str | Path, seriesuid: str | None = None, keep_raw: bool | None = None) -> ScanPrediction:
        """Candidates of one scan.

        Args:
            path: the scan file or DICOM folder.
            seriesuid: its id. Default: from the path.
            keep_raw: keep the raw scan in :attr:`ScanPrediction.raw`. Default: when heatmaps or previews are
                written. Otherwise what was read is released before the network runs, so the network's activations
                reuse its memory.

        Raises:
            CTReadError: the scan cannot be read as CT (the message names the file).
        """
        path = Path(path)
        uid = seriesuid or seriesuid_from_path(path)
        keep = (self.save_heatmap or self.save_previews) if keep_raw is None else bool(keep_raw)
        t = [time.perf_counter()]
        source = read_for_preprocessing(path, self.preprocess)
        t.append(time.perf_counter())
        scan = preprocess_image(source, self.preprocess)
        if not scan.lung_found:
            logger.warning("%s: no lungs found by thresholding; searching the whole scan", path)
        raw = source if keep else None
        del source
        t.append(time.perf_counter())
        maps = self.predictor(torch.from_numpy(scan.image)[None, None])
        s = self.predictor.stride()
        t.append(time.perf_counter())
        cands, index = self._decode(path, maps, scan.geometry, s)
        t.append(time.perf_counter())
        names: tuple[str, ...] = ("read", "preprocess", "network", "decode")
        if self.classifier is not None:  # false-positive reduction on the detector's own input image
            cands, order = self.classifier.rescore(scan.image, scan.geometry, cands)
            index = index[order]
            t.append(time.perf_counter())
            names += ("fpr",)
        seconds = {n: round(b - a, 3) for n, a, b in zip(names, t[:-1], t[1:])}
        return ScanPrediction(uid, path, cands, index, scan.geometry, maps, s, raw, seconds)

    def _decode(
        self, path: Path, maps: dict[str, torch.Tensor], geometry: Geometry, stride: int
    ) -> tuple[ScanCandidates, np.ndarray]:
        """Peaks of the maps as world-mm candidates and their (K, 3) processed-voxel indices."""
        heat = maps["heatmap"]
        if float(heat.min()) < 0.0 or float(heat.max()) > 1.0:
            logger.warning(
                "%s: heatmap outside [0, 1] (%.3g..%.3g); is the model exported in train mode (logits)? clipping",
                path,
                float(heat.min()),
                float(heat.max()),
            )
            maps["heatmap"] = heat = heat.clamp(0.0, 1.0)
        decoded = decode_peaks(
            heat, maps["diameter"], maps["malignancy"], self.decode, tuple(geometry.spacing * stride)
        )
        index = output_to_input_index(decoded["index"], stride).reshape(-1, 3)
        world = geometry.index_to_world(index).reshape(-1, 3)
        cands = ScanCandidates(
            world, np.clip(decoded["score"], 0.0, 1.0), decoded["diameter_mm"], np.clip(decoded["malignancy"], 0.0, 1.0)
        )
        return cands, index

    def predict_many(self, items: Sequence[Mapping[str, str]]) -> Iterator[tuple[Mapping[str, str], Any]]:
        """Yield ``(item, ScanPrediction)`` per scan, or ``(item, error message)`` when it failed; never raises.

        Shows a progress bar (:func:`~pivot_monai.logs.progress`: live on a terminal, a line every 30 s otherwise).
        """
        for item in progress(items, desc="infer", unit="scan", logger=logger):
            try:
                yield item, self.predict(item["image"], item.get("seriesuid"))
            except Exception as err:  # noqa: BLE001 - one broken scan must never stop the others
                msg = str(err) if str(item["image"]) in str(err) else f"{item['image']}: {type(err).__name__}: {err}"
                logger.error("%s", msg)
                logger.debug("traceback of %s", item["image"], exc_info=True)
                yield item, msg

    def write_outputs(self, pred: ScanPrediction, output_dir: Path) -> None:
        """The optional per-scan outputs (heatmap on the raw grid, previews)."""
        if self.save_heatmap:
            sitk.WriteImage(
                heatmap_on_raw_grid(pred), str(output_dir / f"{pred.seriesuid}_heatmap.nii.gz"), useCompression=True
            )
        if self.save_previews and len(pred.candidates):
            from pivot_monai.inference.previews import write_previews  # matplotlib, only when previews are asked for

            write_previews(pred.raw, pred.seriesuid, pred.candidates, output_dir / "previews", self.num_previews)

    def run(self, inputs: Any, output_dir: str | Path, *, raise_on_failure: bool = False) -> dict[str, Any]:
        """Infer every scan of ``inputs`` and write ``candidates.csv`` and ``infer_report.json`` to ``output_dir``.

        Args:
            inputs: scan files, DICOM folders or folders of them (or ``{"image": path}`` items).
            output_dir: output folder (created).
            raise_on_failure: raise ``RuntimeError`` after writing the outputs when a scan failed. Default False.

        Returns:
            The report (also in ``infer_report.json``): ``ok``, ``failed`` (``path``, ``seriesuid``, ``error``),
            ``n_candidates`` and ``seconds`` per scan, ``candidates_csv``.

        Raises:
            FileNotFoundError: an input path does not exist or holds no scans (nothing is run).
        """
        out = Path(output_dir)
        items = scan_datalist(inputs)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        report: dict[str, Any] = {"ok": [], "failed": [], "n_candidates": {}, "seconds": {}}
        candidates: dict[str, ScanCandidates] = {}
        for item, result in self.predict_many(items):
            if isinstance(result, str):
                report["failed"].append({"path": item["image"], "seriesuid": item["seriesuid"], "error": result})
                continue
            t = time.perf_counter()
            try:
                self.write_outputs(result, out)
            except Exception as err:  # noqa: BLE001 - keep the candidates even if a preview fails
                logger.error("%s: writing heatmap/previews failed: %s: %s", result.path, type(err).__name__, err)
            result.seconds["outputs"] = round(time.perf_counter() - t, 3)
            candidates[result.seriesuid] = result.candidates
            report["ok"].append(result.seriesuid)
            report["n_candidates"][result.seriesuid] = len(result.candidates)
            report["seconds"][result.seriesuid] = result.seconds
            logger.debug(
                "%s: %d candidates in %.2f s (%s)",
                result.seriesuid,
                len(result.candidates),
                sum(result.seconds.values()),
                ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items()),
            )
        csv_path = write_submission_csv(out / CANDIDATES_NAME, candidates)
        report.update(
            candidates_csv=str(csv_path),
            output_dir=str(out),
            n_scans=len(items),
            total_seconds=round(time.perf_counter() - t0, 3),
            settings=self.settings(),
        )
        atomic_write_text(out / REPORT_NAME, json.dumps(report, indent=1))
        done = len(report["ok"])
        logger.info(
            "%d of %d scan(s) done, %d failed, %d candidates, %.2f s per scan -> %s",
            done,
            len(items),
            len(report["failed"]),
            sum(report["n_candidates"].values()),
            sum(sum(t.values()) for t in report["seconds"].values()) / max(done, 1),
            csv_path,
        )
        if report["failed"] and raise_on_failure:
            raise RuntimeError(
                f"{len(report['failed'])} scan(s) failed, first: {report['failed'][0]['error']}; "
                f"see {out / REPORT_NAME}"
            )
        return report

    def settings(self) -> dict[str, Any]:
        """The preprocessing, decoding, TTA and host settings in effect (for the report)."""
        return {
            **self.config.to_dict(),
            "tta": self.predictor.tta.names,
            "roi_size": list(self.predictor.roi_size),
            "output_stride": self.predictor.output_stride,
            "autocast": str(self.predictor.autocast_dtype).replace("torch.", "") if self.predictor.autocast else None,
            "fpr": None if self.classifier is None else self.classifier.to_dict(),
        }


def infer_scans(
    inputs: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    model: Any,
    settings: InferenceSettings | None = None,
    *,
    save_heatmap: bool = False,
    save_previews: bool = False,
    num_previews: int = 5,
    raise_on_failure: bool = False,
    classifier: Any = None,
) -> dict[str, Any]:
    """Detect nodules in raw CT scans and write ``candidates.csv`` (and ``infer_report.json``) to ``output_dir``.

    Args:
        inputs: ``.mhd``/NIfTI files, DICOM folders, or folders holding them (searched recursively).
        output_dir: output folder.
        model: ``.pt`` checkpoint (built with ``settings.model``), ``.ts``, ``.onnx``, or a network/callable.
        settings: the run's settings (:meth:`InferenceSettings.from_config`). Default: the defaults on the CPU.
        save_heatmap: write ``<uid>_heatmap.nii.gz`` aligned with the raw scan. Default False.
        save_previews: write PNG previews of the top candidates. Default False.
        num_previews: candidates previewed per scan. Default 5.
        raise_on_failure: raise after writing the outputs when a scan failed. Default False.
        classifier: the false-positive-reduction classifier (:func:`~pivot_monai.inference.fpr.resolve_classifier`),
            or ``None`` for the detector's scores. Default None.

    Returns:
        The report of :meth:`InferencePipeline.run`; ``report["failed"]`` is non-empty when a scan failed.

    Raises:
        FileNotFoundError: an input or the model file does not exist.
        ValueError: a bad model file or config value.
    """
    settings = settings or InferenceSettings()
    pipeline = InferencePipeline(
        Predictor.from_settings(model, settings),
        settings,
        save_heatmap=save_heatmap,
        save_previews=save_previews,
        num_previews=num_previews,
        classifier=classifier,
    )
    return pipeline.run(inputs, output_dir, raise_on_failure=raise_on_failure)


if __name__ == "__main__":  # the guide's `python -m src.eval.pipeline`: evaluation, as `pivot evaluate`
    import sys

    from pivot_monai.cli import main

    sys.exit(main(["evaluate", *sys.argv[1:]]))
