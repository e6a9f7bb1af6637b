"""Preprocessing of raw CT into training-ready volumes: lung crop, resampling, HU window, nodule labels.

Per scan, written to ``<output_dir>/<seriesuid>/``:

* ``image.nii.gz``: float32 intensities in [0, 1] (HU clipped to ``data.hu_window``), at ``data.target_spacing``,
  cropped to the lung bounding box plus ``data.lung_crop.margin_mm``;
* ``label.nii.gz``: uint16 nodule instance ids (one sphere per annotated nodule, 0 = background);
* ``meta.json``: the raw and processed geometry and every nodule's world and processed-voxel centre, diameter and
  malignancy. ``Geometry.from_dict(meta["processed_geometry"]).index_to_world(ijk)`` maps any processed voxel to
  world mm of the raw scan, because resampling keeps origin and direction and cropping only shifts the origin.

The same :func:`preprocess_image` is used by inference, so training and inference see identical inputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pivot_monai.data.annotations import DEFAULT_MALIGNANCY_THRESHOLD, Nodule
from pivot_monai.data.geometry import Geometry
from pivot_monai.data.io import CTReadError, read_sitk, write_image
from pivot_monai.data.lungs import lung_box
from pivot_monai.files import atomic_write_text, remove_stale_temporaries

__all__ = [
    "ANTIALIAS_MODES",
    "CropPlan",
    "PreprocessConfig",
    "PreprocessedScan",
    "ScanError",
    "crop_box",
    "nodule_label_volume",
    "plan_crop",
    "preprocess_image",
    "preprocess_scan",
    "raw_geometry",
    "read_for_preprocessing",
    "resample_crop",
    "residual_variance",
    "shrink_factors",
]

logger = logging.getLogger(__name__)

_COARSE_MM = 4.0  # spacing of the throw-away copy used to find the lungs
_MIN_RATIO = 1.5  # axes downsampled by more than this are low-passed first
ANTIALIAS_MODES = ("area", "gaussian")


class ScanError(ValueError):
    """A scan that cannot be preprocessed; the message names the file and the problem."""


@dataclass
class PreprocessConfig:
    """Preprocessing settings, read from the ``data`` section of ``train.yaml``.

    Args:
        target_spacing: output voxel size in mm, (x, y, z). Default (1.5, 1.5, 1.5).
        hu_window: HU range clipped and scaled to [0, 1]. Default (-1000, 400).
        lung_crop: crop to the lung bounding box. Default True.
        crop_margin_mm: margin around the lung box in mm. Default 10.
        malignancy_threshold: LIDC rating counted as malignant. Default 4.
        antialias: the low-pass of axes downsampled more than 1.5x (``data.antialias``). Both average
            ``round(ratio)`` voxels per output voxel first (one ``BinShrink`` of the whole scan, in its stored type);
            ``"gaussian"`` then adds the rest of a blur of variance ``sigma**2``, ``sigma = spacing * sqrt(ratio**2 -
            1) / 2``, on the cropped region; ``"area"`` stops at the box average. Default ``"gaussian"``.
    """

    target_spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    lung_crop: bool = True
    crop_margin_mm: float = 10.0
    malignancy_threshold: float = DEFAULT_MALIGNANCY_THRESHOLD
    antialias: str = "gaussian"

    def __post_init__(self) -> None:
        self.target_spacing = tuple(float(v) for v in self.target_spacing)  # type: ignore[assignment]
        self.hu_window = tuple(float(v) for v in self.hu_window)  # type: ignore[assignment]
        if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
            raise ValueError(f"data.target_spacing must be 3 positive mm values, got {list(self.target_spacing)}")
        if len(self.hu_window) != 2 or self.hu_window[0] >= self.hu_window[1]:
            raise ValueError(f"data.hu_window must be [low, high] with low < high, got {list(self.hu_window)}")
        if self.crop_margin_mm < 0:
            raise ValueError(f"data.lung_crop.margin_mm must be >= 0, got {self.crop_margin_mm}")
        if self.antialias not in ANTIALIAS_MODES:
            raise ValueError(f"data.antialias must be one of {list(ANTIALIAS_MODES)}, got {self.antialias!r}")

    @classmethod
    def from_data_section(cls, data: dict[str, Any] | None) -> PreprocessConfig:
        """Build from the guide's ``data`` section (missing keys take the defaults above)."""
        data = data or {}
        crop = data.get("lung_crop", {})
        crop = {"enabled": bool(crop)} if isinstance(crop, bool) else dict(crop)
        kwargs: dict[str, Any] = {}
        if "target_spacing" in data:
            kwargs["target_spacing"] = data["target_spacing"]
        if "hu_window" in data:
            kwargs["hu_window"] = data["hu_window"]
        kwargs["lung_crop"] = bool(crop.get("enabled", True))
        if "margin_mm" in crop:
            kwargs["crop_margin_mm"] = float(crop["margin_mm"])
        if "malignancy_threshold" in data:
            kwargs["malignancy_threshold"] = float(data["malignancy_threshold"])
        if "antialias" in data:
            kwargs["antialias"] = str(data["antialias"])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class PreprocessedScan:
    """Output of :func:`preprocess_image`.

    Attributes:
        image: (X, Y, Z) float32 in [0, 1].
        geometry: geometry of ``image`` in the raw scan's world frame.
        raw_geometry: geometry of the raw scan.
        crop_start: start index of the crop in the full resampled grid.
        lung_found: whether a lung mask was found (else the whole scan is kept).
    """

    image: np.ndarray
    geometry: Geometry
    raw_geometry: Geometry
    crop_start: tuple[int, int, int]
    lung_found: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def crop_box(
    raw_geom: Geometry,
    cfg: PreprocessConfig,
    must_include_world: np.ndarray | None = None,
    must_include_radius_mm: np.ndarray | None = None,
    *,
    source: sitk.Image,
) -> tuple[Geometry, tuple[int, int, int], bool]:
    """Target-spacing grid of the lung box (plus margin), also covering any ``must_include_world`` points.

    Args:
        raw_geom: the scan's geometry; the full target grid is its extent resampled to ``cfg.target_spacing``.
        cfg: preprocessing settings.
        must_include_world: (N, 3) world points the crop must contain.
        must_include_radius_mm: (N,) radius around each of those points.
        source: the image the ~4 mm lung-finding copy is shrunk from: the scan, or a downsampled copy of it in the
            same world frame (cheaper to shrink).

    Returns:
        (geometry of the cropped target grid, crop start in the full resampled grid, whether lungs were found).
    """
    full = raw_geom.resampled(cfg.target_spacing)
    size = np.asarray(full.size)
    if not cfg.lung_crop:
        return full, (0, 0, 0), True
    factors = [max(1, int(round(_COARSE_MM / s))) for s in source.GetSpacing()]
    coarse = sitk.BinShrink(source, factors)
    coarse_geom = Geometry.from_sitk(coarse)
    box = lung_box(sitk.GetArrayViewFromImage(coarse).transpose(2, 1, 0), coarse_geom.spacing)
    if box is None:
        return full, (0, 0, 0), False
    lo_c, hi_c = box
    corners = np.array(
        [
            [a, b, c]
            for a in (lo_c[0] - 0.5, hi_c[0] + 0.5)
            for b in (lo_c[1] - 0.5, hi_c[1] + 0.5)
            for c in (lo_c[2] - 0.5, hi_c[2] + 0.5)
        ]
    )
    world = coarse_geom.index_to_world(corners)
    if must_include_world is not None and len(must_include_world):
        r = (
            np.asarray(must_include_radius_mm, dtype=float).reshape(-1, 1)
            if must_include_radius_mm is not None
            else np.zeros((len(must_include_world), 1))
        )
        offsets = np.array([[dx, dy, dz] for dx in (-1, 1) for dy in (-1, 1) for dz in (-1, 1)], dtype=float)
        world = np.concatenate([world] + [must_include_world + o * r for o in offsets])
    idx = full.world_to_index(world)
    margin = cfg.crop_margin_mm / full.spacing
    lo = np.clip(np.floor(idx.min(axis=0) - margin), 0, size - 1).astype(int)
    hi = np.clip(np.ceil(idx.max(axis=0) + margin) + 1, lo + 1, size).astype(int)
    return full.crop(tuple(lo), tuple(hi)), tuple(int(v) for v in lo), True


def _antialias_sigmas(spacing: np.ndarray, target_spacing: np.ndarray) -> np.ndarray:
    """Gaussian low-pass sigma in mm per axis before resampling ``spacing`` to ``target_spacing`` (0: none needed).

    ``sigma = spacing * sqrt(ratio**2 - 1) / 2`` widens the voxel's own blur to about half the target voxel, for
    axes downsampled by more than 1.5x; milder downsampling aliases too little to pay for a filter pass.
    """
    spacing = np.asarray(spacing, float)
    ratio = np.asarray(target_spacing, float) / spacing
    return np.where(ratio > _MIN_RATIO, spacing * np.sqrt(np.maximum(ratio * ratio - 1.0, 0.0)) / 2.0, 0.0)


def shrink_factors(spacing: np.ndarray, target_spacing: np.ndarray, size: np.ndarray | None = None) -> np.ndarray:
    """Voxels averaged per axis by the first low-pass step: ``round(target / spacing)`` where that ratio exceeds 1.5.

    Each average then spans about one target voxel (a box filter of the target's width, as image libraries'
    "area" downsampling); ``size`` caps the factor at half the axis.

    Example:
        >>> shrink_factors(np.array([0.7, 0.7, 1.25]), np.array([2.0, 2.0, 2.0])).tolist()
        [3, 3, 2]
    """
    ratio = np.asarray(target_spacing, float) / np.asarray(spacing, float)
    factors = np.where(ratio > _MIN_RATIO, np.round(ratio), 1.0)
    if size is not None:
        factors = np.minimum(factors, np.maximum(np.asarray(size) // 2, 1))
    return factors.clip(min=1).astype(int)


def residual_variance(spacing: np.ndarray, target_spacing: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Blur variance per axis, in voxels**2 of the shrunk grid, that the ``"gaussian"`` low-pass adds after the box.

    A box of ``f`` voxels has variance ``spacing**2 (f**2 - 1) / 12``; the rest of ``sigma**2``
    (:func:`_antialias_sigmas`) is left. With ``f = round(ratio)`` it never exceeds 0.27 voxels**2 (more only where
    :func:`shrink_factors` capped ``f`` on an axis of a few voxels).
    """
    spacing = np.asarray(spacing, float)
    factors = np.asarray(factors, float)
    box = spacing**2 * (factors**2 - 1.0) / 12.0
    rest = np.maximum(_antialias_sigmas(spacing, target_spacing) ** 2 - box, 0.0)
    return rest / (spacing * factors) ** 2


def _shrink(raw: sitk.Image, factors: np.ndarray) -> sitk.Image:
    """``BinShrink`` of the whole scan, in its stored pixel type (an integer scan's averages round to whole HU).

    One pass over the full-resolution scan; the lung mask, the crop and the resampling all work on its output (a
    0.7 mm 512 x 512 scan going to 2 mm keeps 1/18 of its voxels). ``BinShrink`` puts each output voxel at the centre
    of its bin, so world positions are unchanged (tested in ``tests/data/test_preprocess.py``).
    """
    return sitk.BinShrink(raw, [int(f) for f in factors]) if np.any(np.asarray(factors) > 1) else raw


def _smooth_residual(image: sitk.Image, variance: np.ndarray) -> sitk.Image:
    """Convolve each axis of ``variance > 0`` with ``[v/2, 1 - v, v/2]``: a kernel of exactly that variance (voxels**2).

    Hand-written with ``scipy.ndimage.correlate1d`` because the residual is a fraction of a voxel (sigma 0.2-0.5),
    where ITK's recursive Gaussian is wrong (at sigma 0.38 voxels it blurs by 0.22) and a sampled Gaussian kernel
    as wrong; a three-tap kernel has the exact variance for any ``v <= 2/3``.
    """
    from scipy import ndimage

    if not np.any(np.asarray(variance) > 1e-6):
        return image
    array = sitk.GetArrayViewFromImage(image)  # (z, y, x), read only: each pass writes into one of two buffers
    buffers = [np.empty_like(array), np.empty_like(array)]
    for axis, v in enumerate(np.asarray(variance, float)):
        out = buffers[1] if array is buffers[0] else buffers[0]  # never the pass's own input
        if v > 2.0 / 3.0:  # only when shrink_factors was capped by a tiny axis: sigma > 0.8 voxel, sampling is fine
            array = ndimage.gaussian_filter1d(array, float(np.sqrt(v)), axis=2 - axis, output=out, mode="nearest")
        elif v > 1e-6:
            array = ndimage.correlate1d(array, [v / 2.0, 1.0 - v, v / 2.0], axis=2 - axis, output=out, mode="nearest")
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def _linear(image: sitk.Image, target: Geometry) -> sitk.Image:
    """``image`` resampled (linear) onto ``target`` as float32; -1000 HU (air) outside it."""
    return sitk.Resample(
        image,
        [int(v) for v in target.size],
        sitk.Transform(),
        sitk.sitkLinear,
        [float(v) for v in target.origin],
        [float(v) for v in target.spacing],
        [float(v) for v in target.direction.reshape(-1)],
        -1000.0,
        sitk.sitkFloat32,
    )


def _raw_roi(raw: sitk.Image, target: Geometry, pad_vox: int = 2) -> sitk.Image:
    """The part of ``raw`` that covers ``target`` (so smoothing and resampling only touch that region)."""
    raw_geom = Geometry.from_sitk(raw)
    corners = np.array(
        [
            [a, b, c]
            for a in (-0.5, target.size[0] - 0.5)
            for b in (-0.5, target.size[1] - 0.5)
            for c in (-0.5, target.size[2] - 0.5)
        ]
    )
    idx = raw_geom.world_to_index(target.index_to_world(corners))
    size = np.asarray(raw.GetSize())
    lo = np.clip(np.floor(idx.min(axis=0)) - pad_vox, 0, size - 1).astype(int)
    hi = np.clip(np.ceil(idx.max(axis=0)) + pad_vox + 1, lo + 1, size).astype(int)
    return sitk.RegionOfInterest(raw, [int(v) for v in hi - lo], [int(v) for v in lo])


def read_for_preprocessing(path: str | Path, cfg: PreprocessConfig | None = None) -> sitk.Image:
    """A scan as :func:`preprocess_image` takes it: read whole by :func:`~pivot_monai.data.io.read_sitk` in its
    stored pixel type (int16 for LUNA16), so the first low-pass step averages integers as training's did.

    Raises:
        CTReadError: the scan cannot be read as CT (the message names the file).
    """
    return read_sitk(path, as_float=False)


def raw_geometry(raw: sitk.Image) -> Geometry:
    """The geometry of the scan as stored."""
    return Geometry.from_sitk(raw)


@dataclass
class CropPlan:
    """The first half of :func:`preprocess_image`: the shrunk scan and the output grid it is resampled onto.

    Attributes:
        shrunk: the scan after the first low-pass step (:func:`shrink_factors`), in its stored pixel type.
        factors: the bin size per axis (x, y, z).
        raw_geometry: the geometry of the scan as stored.
        target: the output grid: the lung box plus margin at ``target_spacing``.
        crop_start: start index of the crop in the full resampled grid.
        lung_found: whether a lung mask was found (else the whole scan is kept).
    """

    shrunk: sitk.Image
    factors: np.ndarray
    raw_geometry: Geometry
    target: Geometry
    crop_start: tuple[int, int, int]
    lung_found: bool


def plan_crop(
    raw: sitk.Image,
    cfg: PreprocessConfig,
    must_include_world: np.ndarray | None = None,
    must_include_radius_mm: np.ndarray | None = None,
) -> CropPlan:
    """Shrink the scan where it is finer than the target and decide the output grid (the lung box plus margin).

    Args:
        raw: the scan in HU as read by :func:`pivot_monai.data.io.read_sitk`, float32 or its stored integer type
            (``as_float=False``, as :func:`read_for_preprocessing` reads it).
        cfg: preprocessing settings.
        must_include_world: (N, 3) world points the crop must contain (annotated nodules).
        must_include_radius_mm: (N,) radius around each of those points.

    Returns:
        The plan :func:`resample_crop` finishes; ``plan.target.size`` is the size of the image it will return.
    """
    raw_geom = raw_geometry(raw)
    factors = shrink_factors(raw_geom.spacing, np.asarray(cfg.target_spacing), np.asarray(raw_geom.size))
    shrunk = _shrink(raw, factors)
    target, start, found = crop_box(raw_geom, cfg, must_include_world, must_include_radius_mm, source=shrunk)
    return CropPlan(shrunk, np.asarray(factors), raw_geom, target, start, found)


def resample_crop(plan: CropPlan, cfg: PreprocessConfig) -> PreprocessedScan:
    """The second half of :func:`preprocess_image`: low-pass, resample and HU-window the planned crop.

    Only the cropped region is cast to float32, smoothed by the rest of the ``"gaussian"`` blur
    (:func:`residual_variance`) and resampled (linear) onto ``plan.target``.
    """
    roi = _raw_roi(plan.shrunk, plan.target)
    if roi.GetPixelID() != sitk.sitkFloat32:
        roi = sitk.Cast(roi, sitk.sitkFloat32)
    if cfg.antialias == "gaussian":
        variance = residual_variance(plan.raw_geometry.spacing, np.asarray(cfg.target_spacing), plan.factors)
        roi = _smooth_residual(roi, variance)
    resampled = _linear(roi, plan.target)
    hu = sitk.GetArrayViewFromImage(resampled).transpose(2, 1, 0)  # read only, `resampled` outlives it
    lo, hi = cfg.hu_window
    # in place on one (x, y, z) array: the same float32 operations as ((clip(hu) - lo) / (hi - lo)), one buffer
    # instead of five temporaries of the crop's size
    image = np.empty(hu.shape, dtype=np.float32)
    np.clip(hu, lo, hi, out=image)
    image -= lo
    image /= hi - lo
    return PreprocessedScan(image, plan.target, plan.raw_geometry, plan.crop_start, plan.lung_found)


def preprocess_image(
    raw: sitk.Image,
    cfg: PreprocessConfig,
    must_include_world: np.ndarray | None = None,
    must_include_radius_mm: np.ndarray | None = None,
) -> PreprocessedScan:
    """Lung crop, resample and HU-window one raw scan: :func:`plan_crop`, then :func:`resample_crop`.

    Axes downsampled more than 1.5x are first averaged over ``round(ratio)`` voxels (:func:`shrink_factors`) in the
    scan's stored type, so an integer scan's image differs from its float32 copy's by the rounding of those averages
    to whole HU (at most 0.5 HU before windowing). Callers that act between the two halves (``pivot infer`` sizes the
    network's memory from the planned grid) call them in turn.

    Args:
        raw: the scan (see :func:`plan_crop`).
        cfg: preprocessing settings.
        must_include_world: (N, 3) world points the crop must contain (annotated nodules).
        must_include_radius_mm: (N,) radius around each of those points.

    Returns:
        The processed image with its geometry in the raw scan's world frame.
    """
    return resample_crop(plan_crop(raw, cfg, must_include_world, must_include_radius_mm), cfg)


def nodule_label_volume(geometry: Geometry, nodules: list[Nodule]) -> np.ndarray:
    """(X, Y, Z) uint16 volume with a sphere of id ``i + 1`` for ``nodules[i]``, measured in world mm.

    Distances are computed in world space, so spheres stay spheres for any spacing and direction.
    """
    label = np.zeros(geometry.size, dtype=np.uint16)
    for i, n in enumerate(nodules):
        centre = geometry.world_to_index(np.asarray(n.world))
        r_vox = (n.diameter_mm / 2.0) / geometry.spacing
        lo = np.maximum(np.floor(centre - r_vox - 1).astype(int), 0)
        hi = np.minimum(np.ceil(centre + r_vox + 2).astype(int), np.asarray(geometry.size))
        if np.any(hi <= lo):
            continue
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
        d2 = np.sum((geometry.index_to_world(grid) - np.asarray(n.world)) ** 2, axis=-1)
        sphere = d2 <= max((n.diameter_mm / 2.0) ** 2, float(np.min(geometry.spacing) / 2.0) ** 2)
        sub = label[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        sub[sphere & (sub == 0)] = i + 1
    return label


def _nodule_record(n: Nodule, geometry: Geometry, cfg: PreprocessConfig, idx: int | None) -> dict[str, Any]:
    rec = n.to_dict()
    rec["voxel"] = geometry.world_to_index(np.asarray(n.world)).tolist()
    rec["malignant"] = n.is_malignant(cfg.malignancy_threshold)
    if idx is not None:
        rec["label_id"] = idx + 1
    return rec


def preprocess_scan(
    scan_path: str | Path,
    seriesuid: str,
    nodules: list[Nodule],
    excluded: list[Nodule],
    output_dir: str | Path,
    cfg: PreprocessConfig,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Preprocess one raw scan and write ``image.nii.gz``, ``label.nii.gz`` and ``meta.json``.

    Raises:
        ScanError: unreadable/truncated scan. Nothing is written then. An annotation outside the image is skipped
            with a warning; the scan is processed with the others.
    """
    scan_path = Path(scan_path)
    try:
        raw = read_for_preprocessing(scan_path, cfg)
    except CTReadError as err:
        raise ScanError(str(err)) from err
    raw_geom = raw_geometry(raw)
    outside = [n for n in nodules if not raw_geom.contains_index(raw_geom.world_to_index(np.asarray(n.world)))[0]]
    for n in outside:  # one bad row costs that finding, not the scan
        logger.warning(
            "%s: annotation at world %s mm (diameter %g mm) lies outside the image (origin %s, size %s, spacing %s); "
            "skipped: check the seriesuid and the coordinate columns",
            scan_path,
            list(n.world),
            n.diameter_mm,
            raw_geom.origin.tolist(),
            list(raw_geom.size),
            raw_geom.spacing.tolist(),
        )
    nodules = [n for n in nodules if n not in outside]
    world = np.asarray([n.world for n in nodules], dtype=float).reshape(-1, 3)
    radius = np.asarray([n.diameter_mm / 2.0 for n in nodules], dtype=float)
    scan = preprocess_image(raw, cfg, world, radius)
    if not scan.lung_found:
        logger.warning("%s: no lungs found by thresholding; keeping the whole scan", scan_path)
    label = nodule_label_volume(scan.geometry, nodules)
    out = Path(output_dir) / seriesuid
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # of an earlier run killed while writing this scan
    # each file is written atomically with fsync, meta.json last: its presence marks a finished, durable scan
    write_image(scan.image, scan.geometry, out / "image.nii.gz")
    write_image(label, scan.geometry, out / "label.nii.gz")
    meta = {
        "seriesuid": seriesuid,
        "source": str(scan_path),
        "raw_geometry": raw_geom.to_dict(),
        "processed_geometry": scan.geometry.to_dict(),
        "crop_start": list(scan.crop_start),
        "lung_found": scan.lung_found,
        "preprocess_config": cfg.to_dict(),
        "nodules": [_nodule_record(n, scan.geometry, cfg, i) for i, n in enumerate(nodules)],
        "excluded": [_nodule_record(n, scan.geometry, cfg, None) for n in excluded],
        **(extra_meta or {}),
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1))
    return meta
