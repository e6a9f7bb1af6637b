"""Preview PNG of a (synthetic or real) LUNA16-style scan: orthogonal slices through an annotated nodule.

Slices are shown in radiological convention (patient's right on the image left, anterior up on axial views) in a
lung window (W 1500 / L -600), with physical aspect ratio, the nodule circled and its diameter in the title.
Rendering uses matplotlib's Agg canvas directly, so it never changes the global backend.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from pivot_monai.data.annotations import Nodule, read_annotations
from pivot_monai.data.io import find_scans, read_ct, seriesuid_from_path
from pivot_monai.data.synthetic.scanner import to_canonical

__all__ = ["LUNG_WINDOW", "render_preview"]

logger = logging.getLogger(__name__)

LUNG_WINDOW = (-600.0, 1500.0)  # level, width
_ZOOM_MM = 70.0


def _find_annotations(start: Path) -> Path | None:
    for folder in (start, *start.parents[:2]):
        if (folder / "annotations.csv").exists():
            return folder / "annotations.csv"
    return None


def _choose(path: Path, nodule_index: int) -> tuple[Path, Nodule | None]:
    """The scan to show and the chosen nodule (None when the scan or dataset has no annotated nodule)."""
    scans = find_scans(path)
    if not scans:
        raise FileNotFoundError(f"{path}: no scans found (expected a .mhd file or a LUNA16-style folder)")
    ann_path = _find_annotations(path if path.is_dir() else path.parent)
    annotations = read_annotations(ann_path) if ann_path else {}
    by_uid = {seriesuid_from_path(s): s for s in scans}
    pool = [n for uid, found in annotations.items() if uid in by_uid for n in found]  # annotations.csv order
    if not pool:
        return scans[0], None
    if not 0 <= nodule_index < len(pool):
        raise ValueError(
            f"nodule_index must be in 0..{len(pool) - 1} for {path} ({len(pool)} annotated nodules), got {nodule_index}"
        )
    nodule = pool[nodule_index]
    return by_uid[nodule.seriesuid], nodule


def render_preview(dataset_dir_or_mhd: str | Path, png_path: str | Path, nodule_index: int = 0) -> Path:
    """Write a PNG with axial, coronal and sagittal slices (and an axial close-up) through an annotated nodule.

    Args:
        dataset_dir_or_mhd: a LUNA16-style dataset folder (``annotations.csv`` at its root) or one scan file;
            for a file, ``annotations.csv`` is looked up in its folder and the two above.
        png_path: output PNG; parent folders are created.
        nodule_index: which annotated nodule, counting rows of ``annotations.csv`` that belong to the scans found
            (for a single scan, its own nodules). With no annotated nodule the first scan's centre is shown.

    Returns:
        The PNG path.

    Raises:
        FileNotFoundError: no scan at ``dataset_dir_or_mhd``.
        ValueError: ``nodule_index`` out of range.
    """
    src = Path(dataset_dir_or_mhd)
    scan_path, nodule = _choose(src, nodule_index)
    vol = read_ct(scan_path)
    try:
        arr, geom = to_canonical(vol.array, vol.geometry)
    except ValueError:
        logger.warning("%s has an oblique direction; showing it in index space", scan_path)
        arr, geom = vol.array, vol.geometry
    centre_world = np.asarray(nodule.world) if nodule else geom.index_to_world((np.asarray(arr.shape) - 1) / 2.0)
    ijk = np.clip(np.round(geom.world_to_index(centre_world)).astype(int), 0, np.asarray(arr.shape) - 1)
    lo = geom.origin
    hi = geom.origin + geom.spacing * (np.asarray(arr.shape) - 1)
    level, width = LUNG_WINDOW
    style = {"cmap": "gray", "vmin": level - width / 2, "vmax": level + width / 2, "interpolation": "bilinear"}

    fig = Figure(figsize=(16, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    views = [
        ("axial", arr[:, :, ijk[2]].T, (lo[0], hi[0], hi[1], lo[1]), "upper", (0, 1)),
        ("coronal", arr[:, ijk[1], :].T, (lo[0], hi[0], lo[2], hi[2]), "lower", (0, 2)),
        ("sagittal", arr[ijk[0], :, :].T, (lo[1], hi[1], lo[2], hi[2]), "lower", (1, 2)),
    ]
    for ax, (name, img, extent, origin, (a, b)) in zip(axes, views):
        ax.imshow(img, extent=extent, origin=origin, aspect="equal", **style)
        ax.set_title(f"{name} (slice {ijk[{'axial': 2, 'coronal': 1, 'sagittal': 0}[name]]})", fontsize=10)
        ax.set_xlabel(f"{'xyz'[a]} (mm)", fontsize=8)
        ax.tick_params(labelsize=7)
        if nodule:
            ax.add_patch(
                Circle(
                    (centre_world[a], centre_world[b]),
                    0.5 * nodule.diameter_mm + 4.0,
                    fill=False,
                    edgecolor="#ff4040",
                    linewidth=1.2,
                )
            )
    zoom = axes[3]
    zoom.imshow(views[0][1], extent=views[0][2], origin="upper", aspect="equal", **style)
    zoom.set_xlim(centre_world[0] - _ZOOM_MM / 2, centre_world[0] + _ZOOM_MM / 2)
    zoom.set_ylim(centre_world[1] + _ZOOM_MM / 2, centre_world[1] - _ZOOM_MM / 2)
    zoom.set_title(f"axial close-up ({_ZOOM_MM:.0f} mm)", fontsize=10)
    zoom.tick_params(labelsize=7)
    if nodule:
        zoom.add_patch(
            Circle(
                (centre_world[0], centre_world[1]),
                0.5 * nodule.diameter_mm + 2.0,
                fill=False,
                edgecolor="#ff4040",
                linewidth=1.0,
                linestyle="--",
            )
        )
        rating = "" if nodule.malignancy is None else f", malignancy {nodule.malignancy:g}"
        title = f"nodule {nodule_index}: diameter {nodule.diameter_mm:.1f} mm{rating}"
    else:
        title = "no annotated nodule: scan centre"
    sp = ", ".join(f"{s:.2f}" for s in geom.spacing)
    fig.suptitle(
        f"{vol.seriesuid}  |  {title}  |  spacing ({sp}) mm  |  lung window W{width:.0f}/L{level:.0f}", fontsize=11
    )
    fig.tight_layout()
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    logger.info("preview written to %s", out)
    return out
