"""Lung background that real chest CT has and a nodule detector must ignore: fissures, emphysema and scars.

* **Fissures** (:func:`draw_fissures`): each lung's oblique fissure and the right horizontal one, as a pleural
  double layer about 0.5 mm thick, rendered with a mass-preserving partial-volume profile so that thin slices
  show a fine line and thick slices a faint band; medially they are often incomplete.
* **Emphysema** (:func:`emphysema_tubes`): centrilobular holes (upper-zone predominant) and paraseptal ones along
  the pleura, -990 HU spheres of 1.5-5 mm drawn before the vessels (vessels still cross them).
* **Scars and plate atelectasis** (:func:`scar_tubes`): short linear soft-tissue opacities, subpleural or basal
  and horizontal: bright elongated blobs that are not nodules.

Calcified granulomas are drawn as tiny calcified findings by :mod:`~pivot_monai.data.synthetic.nodules` and listed
in ``annotations_excluded.csv`` like LUNA16's sub-3 mm findings.
"""

from __future__ import annotations

import numpy as np

from pivot_monai.data.synthetic.chest_model import ChestModel
from pivot_monai.data.synthetic.domains import Domain
from pivot_monai.data.synthetic.raster import RenderGrid, TubeSet
from pivot_monai.data.synthetic.vessels import sample_lung_points

__all__ = ["draw_fissures", "emphysema_tubes", "scar_tubes"]

_FISSURE_THICKNESS_MM = 0.5
_PLEURA_HU = 0.0
_EMPHYSEMA_HU = -990.0


def draw_fissures(hu: np.ndarray, grid: RenderGrid, lung: np.ndarray, model: ChestModel) -> None:
    """Add the model's fissures to the lung voxels of ``hu`` (X, Y, Z float32, in place), slice by slice.

    The line profile is a triangle of half-width ``w`` (the voxel's extent along the fissure normal, which grows
    with the slice thickness for the inclined oblique fissures) scaled so that its integral stays the fissure's
    thickness: partial volume, not a thicker fissure.
    """
    x = grid.axis(0)[:, None].astype(np.float64)
    y = grid.axis(1)[None, :].astype(np.float64)
    h, thick = grid.h, grid.thickness
    # the surfaces do not depend on z: computed once, then each slice only visits its lung voxels, on the surfaces
    # that come within a profile half-width of it
    shape = (len(x), y.shape[1])
    surfaces, z_ranges = [], []
    for height, valid, norm, visibility in model.fissure_surfaces(x, y):
        nz = 1.0 / norm
        w = max(_FISSURE_THICKNESS_MM, float(np.hypot(h * np.sqrt(1.0 - nz * nz), thick * nz)))
        height, valid = np.broadcast_to(height, shape), np.broadcast_to(valid, shape)
        if valid.any():
            reach = w * norm  # |d| < w where |z - height| < w * norm
            surfaces.append((height, valid, norm, w, visibility * _FISSURE_THICKNESS_MM / w))
            z_ranges.append((float(height[valid].min()) - reach, float(height[valid].max()) + reach))
    for k, z in enumerate(grid.axis(2).astype(np.float64)):
        near = [surface for surface, (lo, hi) in zip(surfaces, z_ranges) if lo < z < hi]
        if not near:
            continue
        ix, iy = np.nonzero(lung[:, :, k])
        if len(ix) == 0:
            continue
        add = np.zeros(len(ix), dtype=np.float32)
        for height, valid, norm, w, gain in near:
            d = (z - height[ix, iy]) / norm
            profile = np.clip(1.0 - np.abs(d) / w, 0.0, None) * gain
            np.maximum(add, np.where(valid[ix, iy], profile, 0.0).astype(np.float32), out=add)
        sl = hu[:, :, k]
        values = sl[ix, iy]
        sl[ix, iy] = values + add * (_PLEURA_HU - values)


def emphysema_tubes(rng: np.random.Generator, model: ChestModel, domain: Domain) -> TubeSet:
    """Emphysematous holes as -990 HU spheres (``blend`` mode, drawn before the vessels); empty when absent."""
    if rng.random() >= domain.emphysema_prob:
        return TubeSet.empty()
    severity = rng.uniform(0.1, 1.0)
    n = int(40 + 600 * severity**2)
    centres, radii = [], []
    for side in (0, 1):
        pts = sample_lung_points(rng, model, side, 3 * n, margin=2.5)
        z_rel = np.clip(pts[:, 2] / model.lung_height, 0.0, 1.0)
        keep = rng.random(len(pts)) < z_rel**1.5  # centrilobular: upper zones
        pts = pts[keep][: n // 2]
        centres.append(pts)
        radii.append(np.minimum(rng.uniform(0.8, 2.5, len(pts)) * (1.0 + severity), 5.0))
    if rng.random() < 0.5:  # paraseptal: a row of holes along the pleura
        for side in (0, 1):
            pts = sample_lung_points(rng, model, side, 6 * n, margin=1.5)
            sd = model.lung_sd(pts)[0]
            pts = pts[sd < 5.0][: n // 6]
            centres.append(pts)
            radii.append(rng.uniform(1.5, 4.0, len(pts)))
    c, r = np.concatenate(centres), np.concatenate(radii)
    r = np.minimum(r, model.lung_sd(c)[0] - 0.5)  # holes stay inside the lung: blending would hollow the wall
    keep = r > 0.5
    c, r = c[keep], r[keep]
    return TubeSet(c, c.copy(), r, r.copy(), np.full(len(r), _EMPHYSEMA_HU))


def scar_tubes(rng: np.random.Generator, model: ChestModel, domain: Domain, soft_tissue: float) -> TubeSet:
    """Scars and plate atelectases: short flat-ish soft-tissue bands (``max`` mode, after the vessels)."""
    n = int(rng.poisson(domain.scars))
    if n == 0:
        return TubeSet.empty()
    rows = []
    for _ in range(n):
        side = int(rng.integers(2))
        basal = rng.random() < 0.5
        pts = sample_lung_points(rng, model, side, 200, margin=2.0)
        sd = model.lung_sd(pts)[0]
        z_ok = pts[:, 2] < 0.35 * model.lung_height if basal else np.ones(len(pts), dtype=bool)
        pool = np.flatnonzero((sd < 20.0) & z_ok)
        if not len(pool):
            continue
        centre = pts[int(rng.choice(pool))]
        direction = rng.standard_normal(3)
        if basal:  # plate atelectasis lies roughly horizontal
            direction[2] *= 0.15
        direction /= np.linalg.norm(direction)
        half = 0.5 * rng.uniform(8.0, 30.0)
        radius = rng.uniform(0.5, 1.4)
        value = soft_tissue + rng.uniform(-180.0, 0.0)
        # three segments with small kinks: scars are rarely straight
        pts_line = [centre - half * direction]
        for t in (-1.0 / 3.0, 1.0 / 3.0, 1.0):
            kink = rng.normal(0.0, 0.12 * half, 3)
            pts_line.append(centre + t * half * direction + kink)
        for a, b in zip(pts_line[:-1], pts_line[1:]):
            rows.append((a, b, radius, radius * rng.uniform(0.6, 1.0), value))
    if not rows:
        return TubeSet.empty()
    a, b, ra, rb, v = (np.array(col) for col in zip(*rows))
    return TubeSet(a, b, ra, rb, v)
