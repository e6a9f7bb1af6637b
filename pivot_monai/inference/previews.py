"""PNG previews of candidates: axial, coronal and sagittal crops of the raw scan in a lung window.

Drawn with matplotlib's Agg canvas (no display, pyplot and the global backend untouched). Each panel is in
millimetres around the candidate, with a circle of the predicted diameter.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from pivot_monai.data.geometry import Geometry
from pivot_monai.metrics import ScanCandidates

__all__ = ["LUNG_WINDOW", "write_previews"]

logger = logging.getLogger(__name__)

LUNG_WINDOW: tuple[float, float] = (1500.0, -600.0)
"""(width, level) in HU."""
_HALF_MM = 32.0
_MIN_MARKER_MM = 3.0


def _panel(ax, plane: np.ndarray, extent: list[float], origin: str, title: str, radius_mm: float) -> None:
    width, level = LUNG_WINDOW
    ax.imshow(
        plane.T,
        cmap="gray",
        vmin=level - width / 2,
        vmax=level + width / 2,
        origin=origin,
        extent=extent,
        interpolation="nearest",
    )
    ax.add_patch(Circle((0.0, 0.0), radius_mm, fill=False, edgecolor="red", linewidth=1.2))
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _bounds(c: int, half: int, n: int) -> tuple[int, int]:
    return max(0, c - half), min(n, c + half + 1)


def write_previews(
    raw: sitk.Image, seriesuid: str, candidates: ScanCandidates, output_dir: str | Path, top_k: int = 5
) -> list[Path]:
    """Write ``<output_dir>/<seriesuid>_<rank>.png`` for the ``top_k`` most probable candidates.

    Args:
        raw: the raw scan in HU (as read by :func:`pivot_monai.data.io.read_sitk`).
        seriesuid: scan identifier used in file names and titles.
        candidates: the scan's candidates in world mm.
        output_dir: folder for the PNGs (created).
        top_k: how many candidates, by probability. Default 5.

    Returns:
        The written files, rank 1 first.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    geom = Geometry.from_sitk(raw)
    vol = sitk.GetArrayViewFromImage(raw).transpose(2, 1, 0)  # (x, y, z)
    sx, sy, sz = geom.spacing
    half = np.ceil(_HALF_MM / geom.spacing).astype(int)
    written = []
    order = np.argsort(-candidates.probability, kind="stable")[: max(0, int(top_k))]
    for rank, k in enumerate(order, start=1):
        cont = geom.world_to_index(candidates.world[k])
        ci, cj, ck = (int(v) for v in np.clip(np.round(cont), 0, np.asarray(geom.size) - 1))
        (i0, i1), (j0, j1), (k0, k1) = (_bounds(c, h, n) for c, h, n in zip((ci, cj, ck), half, geom.size))
        di, dj, dk = cont  # extents relative to the continuous position keep the marker on the candidate
        ex = [(i0 - di - 0.5) * sx, (i1 - di - 0.5) * sx]
        ey = [(j0 - dj - 0.5) * sy, (j1 - dj - 0.5) * sy]
        ez = [(k0 - dk - 0.5) * sz, (k1 - dk - 0.5) * sz]
        diameter = None if candidates.diameter_mm is None else float(candidates.diameter_mm[k])
        radius = max((diameter or 0.0) / 2.0, _MIN_MARKER_MM)
        fig = Figure(figsize=(9.0, 3.4), dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 3)
        _panel(axes[0], vol[i0:i1, j0:j1, ck], [ex[0], ex[1], ey[1], ey[0]], "upper", f"axial k={ck}", radius)
        _panel(axes[1], vol[i0:i1, cj, k0:k1], [ex[0], ex[1], ez[0], ez[1]], "lower", f"coronal j={cj}", radius)
        _panel(axes[2], vol[ci, j0:j1, k0:k1], [ey[0], ey[1], ez[0], ez[1]], "lower", f"sagittal i={ci}", radius)
        size = "n/a" if diameter is None or not np.isfinite(diameter) else f"{diameter:.1f} mm"
        world = ", ".join(f"{v:.1f}" for v in candidates.world[k])
        fig.suptitle(f"{seriesuid} #{rank}: p={candidates.probability[k]:.3f}, d={size}  ({world}) mm", fontsize=10)
        path = out / f"{seriesuid}_{rank}.png"
        fig.savefig(path)
        written.append(path)
    logger.debug("%s: %d preview(s) in %s", seriesuid, len(written), out)
    return written
