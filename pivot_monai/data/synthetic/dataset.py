"""Generate synthetic scans and write them as a LUNA16-layout dataset.

Layout written by :func:`generate_dataset`::

    output_dir/
      subset0/<seriesuid>.mhd + .raw     int16 HU, written by SimpleITK
      annotations.csv                     seriesuid,coordX,coordY,coordZ,diameter_mm,malignancy
      annotations_excluded.csv            seriesuid,coordX,coordY,coordZ,diameter_mm (1.5-3 mm findings)
      seriesuids.csv                      header "seriesuid", one uid per line
      synthetic_findings.json             per-scan summary incl. nodule type, placement and scanner/domain parameters
      realism.json, realism.txt           with ``report=True``: measured statistics against real-CT ranges

Scan ``i`` of seed ``s`` draws from ``numpy.random.SeedSequence(s, spawn_key=(i,))``: the same seed gives
byte-identical files, and a scan does not depend on how many others are generated.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pivot_monai.data.annotations import Nodule, write_annotations
from pivot_monai.data.geometry import Geometry
from pivot_monai.data.io import write_image
from pivot_monai.data.synthetic.anatomy import render_anatomy
from pivot_monai.data.synthetic.chest_model import ChestModel
from pivot_monai.data.synthetic.chest_sampling import sample_chest_model
from pivot_monai.data.synthetic.domains import Domain, draw, get_domain
from pivot_monai.data.synthetic.nodules import render_nodule, sample_findings
from pivot_monai.data.synthetic.pathology import draw_fissures, emphysema_tubes, scar_tubes
from pivot_monai.data.synthetic.placement import place_findings
from pivot_monai.data.synthetic.raster import RenderGrid, rasterize_tubes
from pivot_monai.data.synthetic.realism import vessel_volumes
from pivot_monai.data.synthetic.scanner import (
    GENERATOR_VERSION,
    PRESETS,
    add_streaks,
    apply_scanner,
    orient,
    sample_grid,
    signed_permutation,
)
from pivot_monai.data.synthetic.vessels import draw_trees, grow_trees

__all__ = [
    "MANIFEST_NAME",
    "SyntheticScan",
    "dataset_is_current",
    "generate_dataset",
    "generate_scan",
    "make_seriesuid",
    "scan_rng",
    "synthesize_scan",
]

logger = logging.getLogger(__name__)

LIDC_UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."
FINDINGS_NAME = "synthetic_findings.json"
MANIFEST_NAME = "synthetic.json"  # written last: generator version and settings of a complete dataset


@dataclass
class SyntheticScan:
    """One generated scan with its ground truth.

    Attributes:
        array: (X, Y, Z) int16 HU, indexed as ``geometry`` says.
        geometry: origin / spacing / direction / size in LPS world mm.
        nodules: annotated nodules (world centre, nominal diameter, malignancy).
        excluded: 1.5-3 mm findings for ``annotations_excluded.csv`` (no malignancy).
        findings: one dict per finding: kind, placement, diameter_mm, world, malignancy, excluded.
        lung_mask: (X, Y, Z) bool anatomical lung mask, indexed like ``array``.
        info: acquisition parameters (thickness, blur, noise) and timing.
    """

    array: np.ndarray
    geometry: Geometry
    nodules: list[Nodule]
    excluded: list[Nodule]
    findings: list[dict[str, Any]]
    lung_mask: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def scan_rng(seed: int, index: int) -> np.random.Generator:
    """Generator of scan ``index`` of dataset ``seed``, independent of the number of scans generated."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


def make_seriesuid(seed: int, index: int) -> str:
    """A LIDC-looking, deterministic seriesuid: the LIDC prefix and 30 digits derived from ``(seed, index)``."""
    state = np.random.SeedSequence(int(seed), spawn_key=(int(index), 0x51D)).generate_state(4, dtype=np.uint64)
    value = 0
    for word in state:
        value = (value << 64) | int(word)
    return f"{LIDC_UID_PREFIX}{10**29 + value % (9 * 10**29)}"


def _as_rng(rng_or_seed: np.random.Generator | int | np.random.SeedSequence) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, (int, np.integer, np.random.SeedSequence)):
        return np.random.default_rng(rng_or_seed)
    raise TypeError(f"expected a numpy Generator, SeedSequence or int seed, got {type(rng_or_seed).__name__}")


def _artefacts(
    rng: np.random.Generator, domain: Domain, model: ChestModel, grid: RenderGrid, hu: np.ndarray
) -> tuple[bool, tuple[int, int, float] | None]:
    """Draw (and for streaks, add) the scan's artefacts: ``(streaks added, motion slab for apply_scanner)``."""
    z = grid.axis(2)
    streaks = bool(rng.random() < domain.streak_prob)
    if streaks:  # behind the shoulders (top of the chest) or around an implant anywhere
        top = rng.random() < 0.6
        z_lo = model.lung_height - rng.uniform(10.0, 50.0) if top else rng.uniform(0.0, model.lung_height)
        ks = np.flatnonzero((z >= z_lo) & (z <= z_lo + rng.uniform(10.0, 40.0)))
        centre = np.array([model.mx, model.spine_y - (30.0 if top else rng.uniform(0.0, 80.0))])
        add_streaks(hu, grid, rng, centre, range(int(ks[0]), int(ks[-1]) + 1) if len(ks) else range(0))
    motion = None
    if rng.random() < domain.motion_prob:  # the lung bases move most
        ks = np.flatnonzero((z >= min(model.dome_top) - 30.0) & (z <= max(model.dome_top) + 50.0))
        if len(ks):
            motion = (int(ks[0]), int(ks[-1]) + 1, float(rng.uniform(0.5, 1.5)))
    return streaks, motion


def synthesize_scan(
    rng_or_seed: np.random.Generator | int,
    size: str = "small",
    *,
    direction: np.ndarray | None = None,
    seriesuid: str = "synthetic",
    domain: str | Domain = "train",
) -> SyntheticScan:
    """Generate one chest CT with its findings (no disk I/O).

    Args:
        rng_or_seed: a numpy ``Generator`` (consumed) or an integer seed.
        size: acquisition preset, ``"small"``, ``"medium"`` or ``"fullsize"`` (see
            :mod:`~pivot_monai.data.synthetic.scanner`).
        direction: 3x3 direction matrix (columns are index axes), axis-aligned, e.g. ``diag(1, 1, -1)`` for a
            z-flipped scan; None means identity.
        seriesuid: uid stored in the returned :class:`~pivot_monai.data.annotations.Nodule` objects.
        domain: generator domain (``"train"`` or ``"heldout"``, see :mod:`~pivot_monai.data.synthetic.domains`).

    Returns:
        A :class:`SyntheticScan`.

    Raises:
        ValueError: unknown ``size`` or ``domain``, or an oblique ``direction``.
    """
    dom = get_domain(domain)
    if size not in PRESETS:
        raise ValueError(f"size must be one of {sorted(PRESETS)}, got {size!r}")
    if direction is not None:
        signed_permutation(direction)  # fail before rendering on an oblique direction
    start = time.perf_counter()
    rng = _as_rng(rng_or_seed)
    preset = PRESETS[size]
    model = sample_chest_model(rng, dom)
    grid, world_origin = sample_grid(rng, preset, model)
    hu, lung = render_anatomy(model, grid, rng)
    draw_fissures(hu, grid, lung, model)
    emphysema = emphysema_tubes(rng, model, dom)
    rasterize_tubes(hu, grid, emphysema, mode="blend")
    density = draw(rng, dom.vessel_density)
    trees = grow_trees(rng, model, preset.trees, density)
    draw_trees(hu, grid, trees)
    rasterize_tubes(hu, grid, scar_tubes(rng, model, dom, model.tissue.muscle), mode="max")
    specs = place_findings(rng, sample_findings(rng, dom), model, grid, lung, trees.vessels)
    for spec in specs:
        render_nodule(hu, grid, spec)
    psf_mm, noise_hu, sharpness = float(rng.uniform(0.45, 0.95)), draw(rng, dom.noise_hu), draw(rng, dom.sharpness)
    streaks, motion = _artefacts(rng, dom, model, grid, hu)
    array = apply_scanner(hu, grid, rng, psf_mm, noise_hu, sharpness, motion)
    del hu
    array, geometry = orient(array, world_origin, grid.spacing, direction)
    lung_mask, _ = orient(lung, world_origin, grid.spacing, direction)
    shift = world_origin - grid.origin
    nodules, excluded, findings = [], [], []
    for spec in specs:
        world = tuple(float(v) for v in spec.centre + shift)
        target = excluded if spec.excluded else nodules
        target.append(Nodule(seriesuid, world, round(spec.diameter, 4), spec.malignancy))
        findings.append(
            {
                "kind": spec.kind,
                "placement": spec.placement,
                "diameter_mm": round(spec.diameter, 4),
                "world": list(world),
                "malignancy": spec.malignancy,
                "excluded": spec.excluded,
                "irregularity": round(spec.irregularity, 3),
            }
        )
    tbv, bv5 = vessel_volumes(trees.vessels, model.lung_sd(0.5 * (trees.vessels.a + trees.vessels.b))[0] > 0)
    info = {
        "domain": dom.name,
        "tbv_ml": tbv,
        "bv5_ml": bv5,
        "thickness_mm": grid.thickness,
        "psf_mm": psf_mm,
        "noise_hu": noise_hu,
        "sharpness": sharpness,
        "vessel_density": density,
        "emphysema_holes": len(emphysema),
        "streaks": streaks,
        "motion": motion is not None,
        "n_vessel_segments": len(trees.vessels),
        "seconds": time.perf_counter() - start,
    }
    return SyntheticScan(array, geometry, nodules, excluded, findings, lung_mask, info)


def generate_scan(
    rng_or_seed: np.random.Generator | int,
    size: str = "small",
    *,
    direction: np.ndarray | None = None,
    seriesuid: str = "synthetic",
) -> tuple[np.ndarray, Geometry, list[Nodule], list[Nodule]]:
    """Generate one chest CT: ``(array_int16_xyz, geometry, nodules, excluded_findings)``.

    A thin wrapper over :func:`synthesize_scan` (same arguments), which also returns finding types and the lung
    mask.

    Example:
        >>> array, geometry, nodules, excluded = generate_scan(0, "small")
        >>> array.dtype, len(geometry.size)
        (dtype('int16'), 3)
    """
    scan = synthesize_scan(rng_or_seed, size, direction=direction, seriesuid=seriesuid)
    return scan.array, scan.geometry, scan.nodules, scan.excluded


def _scan_job(job: tuple[int, int, str, str, np.ndarray | None, str, bool]) -> tuple[SyntheticScan, dict | None]:
    """Synthesize scan ``index`` of ``seed`` (a worker's unit of work); with ``report``, also its statistics.

    The volume itself is dropped (the caller only writes it), so a worker returns the image and ground truth once.
    """
    index, seed, size, uid, direction, domain, report = job
    scan = synthesize_scan(scan_rng(seed, index), size, direction=direction, seriesuid=uid, domain=domain)
    stats = None
    if report:
        from pivot_monai.data.synthetic.realism import scan_statistics

        stats = scan_statistics(scan)
    scan.lung_mask = np.zeros((0, 0, 0), dtype=bool)
    return scan, stats


def generate_dataset(
    output_dir: str | Path,
    num_scans: int,
    seed: int = 0,
    size: str = "small",
    subset: str = "subset0",
    *,
    direction: np.ndarray | None = None,
    preview: str | Path | None = None,
    domain: str = "train",
    workers: int = 1,
    report: bool = False,
) -> list[dict[str, Any]]:
    """Write ``num_scans`` synthetic scans as a LUNA16-layout dataset (see module docstring).

    Args:
        output_dir: dataset root; created if needed. Existing files of the same names are overwritten.
        num_scans: number of scans (>= 1).
        seed: dataset seed; scan ``i`` uses ``SeedSequence(seed, spawn_key=(i,))``.
        size: ``"small"`` (fast, ~2.3 mm voxels), ``"medium"`` (~1.1 mm) or ``"fullsize"`` (512 x 512).
        subset: folder name for the scans, as in LUNA16's ``subset0``..``subset9``.
        direction: optional axis-aligned direction matrix for every scan (default identity).
        preview: optional PNG path; renders axial/coronal/sagittal views of the first annotated nodule.
        domain: generator domain, ``"train"`` or ``"heldout"`` (:mod:`~pivot_monai.data.synthetic.domains`).
        workers: parallel worker processes (the files do not depend on it).
        report: also measure every scan and write ``realism.json`` / log the realism report
            (:mod:`~pivot_monai.data.synthetic.realism`).

    Returns:
        One dict per scan: ``uid``, ``path``, ``shape``, ``spacing``, ``origin``, ``n_nodules``, ``n_excluded``,
        ``findings``, ``info`` and ``seconds``.

    Raises:
        ValueError: ``num_scans < 1``, ``workers < 1``, or an unknown ``size`` or ``domain``.
    """
    if int(num_scans) < 1:
        raise ValueError(f"num_scans must be at least 1, got {num_scans}")
    if int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if size not in PRESETS:
        raise ValueError(f"size must be one of {sorted(PRESETS)}, got {size!r}")
    get_domain(domain)
    root = Path(output_dir)
    (root / subset).mkdir(parents=True, exist_ok=True)
    jobs = [(i, seed, size, make_seriesuid(seed, i), direction, domain, report) for i in range(int(num_scans))]
    summary: list[dict[str, Any]] = []
    all_nodules: list[Nodule] = []
    all_excluded: list[Nodule] = []
    stats: list[dict[str, Any]] = []
    pool = None
    if int(workers) > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(min(int(workers), len(jobs)))
    results = pool.imap(_scan_job, jobs) if pool is not None else map(_scan_job, jobs)
    try:
        for (index, *_), (scan, scan_stats) in zip(jobs, _progress(results, len(jobs))):
            uid = jobs[index][3]
            path = write_image(scan.array, scan.geometry, root / subset / f"{uid}.mhd")
            all_nodules += scan.nodules
            all_excluded += scan.excluded
            if scan_stats is not None:
                stats.append(scan_stats)
            summary.append(_summary_row(uid, path, scan))
            logger.debug("scan %d/%d %s: shape %s, %d nodule(s)", index + 1, num_scans, uid, scan.array.shape,
                         len(scan.nodules))  # fmt: skip
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    write_annotations(root / "annotations.csv", all_nodules)
    write_annotations(root / "annotations_excluded.csv", all_excluded, with_malignancy=False)
    (root / "seriesuids.csv").write_text("seriesuid\n" + "".join(f"{s['uid']}\n" for s in summary))
    stable = [{k: v for k, v in s.items() if k not in ("seconds", "path")} for s in summary]
    (root / FINDINGS_NAME).write_text(json.dumps(stable, indent=1) + "\n")
    if report:
        _write_report(root, stats)
    manifest = _manifest(int(num_scans), seed, size, subset, direction, domain)
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    logger.info("%d %s scan(s) of domain %s written to %s (%.0f s of generation)", len(summary), size, domain, root,
                sum(s["seconds"] for s in summary))  # fmt: skip
    if preview is not None:
        from pivot_monai.data.synthetic.preview import render_preview

        render_preview(root, preview)
    return summary


def _summary_row(uid: str, path: Path, scan: SyntheticScan) -> dict[str, Any]:
    """One scan's entry of :func:`generate_dataset`'s summary (and of ``synthetic_findings.json``)."""
    info = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in scan.info.items() if k != "seconds"}
    return {
        "uid": uid,
        "path": str(path),
        "shape": list(scan.array.shape),
        "spacing": [round(float(v), 6) for v in scan.geometry.spacing],
        "origin": [round(float(o), 6) for o in scan.geometry.origin],
        "n_nodules": len(scan.nodules),
        "n_excluded": len(scan.excluded),
        "findings": scan.findings,
        "info": info,
        "seconds": round(scan.info["seconds"], 3),
    }


def _progress(results: Any, total: int) -> Any:
    """A progress bar over ``results`` (live on a terminal, a line every 30 s otherwise: pivot_monai.logs)."""
    from pivot_monai.logs import progress

    return progress(results, total=total, desc="synth", unit="scan", logger=logger)


def _write_report(root: Path, stats: list[dict[str, Any]]) -> None:
    from pivot_monai.data.synthetic.realism import realism_report

    text, rows = realism_report(stats)
    (root / "realism.json").write_text(json.dumps(rows, indent=1) + "\n")
    (root / "realism.txt").write_text(text + "\n")
    logger.info("%s", text)


def _manifest(
    num_scans: int, seed: int, size: str, subset: str, direction: np.ndarray | None, domain: str
) -> dict[str, Any]:
    flat = None if direction is None else np.asarray(direction, dtype=float).round(6).reshape(-1).tolist()
    return {
        "generator_version": GENERATOR_VERSION,
        "num_scans": num_scans,
        "seed": seed,
        "size": size,
        "subset": subset,
        "direction": flat,
        "domain": domain,
    }


def dataset_is_current(
    output_dir: str | Path,
    num_scans: int,
    seed: int = 0,
    size: str = "small",
    subset: str = "subset0",
    direction: np.ndarray | None = None,
    domain: str = "train",
) -> bool:
    """Whether ``output_dir`` holds a complete dataset that :func:`generate_dataset` would write now.

    False for a missing or partial dataset, other settings, or one written by an older generator version (the same
    seed then renders different scans), so callers that reuse generated data regenerate it instead.
    """
    try:
        manifest = json.loads((Path(output_dir) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    return manifest == _manifest(int(num_scans), seed, size, subset, direction, domain)
