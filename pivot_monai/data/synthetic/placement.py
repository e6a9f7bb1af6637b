"""Place synthetic nodules in the lungs: isolated, juxtapleural (touching the pleura), juxtavascular or perifissural.

Candidate centres are random points scored by the chest model's lung signed distance (or points beside vessel
segments for juxtavascular nodules, points a radius away from a fissure for perifissural ones); each is then
checked against the rendered lung mask: a nodule's whole body must lie in the lung, a juxtapleural one must also
come within 1.5 mm of the lung wall, and no two nodules may touch. A finding that cannot be placed in a few dozen
tries falls back to an isolated position, and is dropped (with a debug log) when even that fails.
"""

from __future__ import annotations

import logging

import numpy as np

from pivot_monai.data.synthetic.chest_model import ChestModel
from pivot_monai.data.synthetic.nodules import NoduleSpec
from pivot_monai.data.synthetic.raster import RenderGrid, TubeSet
from pivot_monai.data.synthetic.vessels import point_to_tubes_distance

__all__ = ["place_findings"]

logger = logging.getLogger(__name__)

_TRIES = 40
_N_CANDIDATES = 8000
_BAND_MM = 4.0  # width of the shell of candidate centres for juxtapleural nodules
_TOUCH_MM = 1.5  # a juxtapleural nodule's surface comes this close to the lung boundary


def _candidates(rng: np.random.Generator, model: ChestModel, grid: RenderGrid) -> tuple[np.ndarray, np.ndarray]:
    """Random points inside the lungs and the field of view: ``(points (N, 3), lung signed distance (N,))``."""
    lo = np.maximum(grid.origin, [-model.cav_a, -model.cav_b, 0.0])
    hi = np.minimum(
        grid.origin + grid.spacing * (np.asarray(grid.shape) - 1), [model.cav_a, model.cav_b_post, model.lung_height]
    )
    pts = rng.uniform(lo, hi, (_N_CANDIDATES, 3))
    sd, _ = model.lung_sd(pts)
    inside = sd > 1.0
    return pts[inside], sd[inside]


def _lung_contact(
    lung: np.ndarray, grid: RenderGrid, spec: NoduleSpec, centre: np.ndarray, margin: float
) -> tuple[float, bool]:
    """How a nodule at ``centre`` sits in the lung mask: ``(fraction of its body voxels in the lung, touches)``.

    ``touches`` is True when some voxel within ``margin`` mm of the nodule's actual (lobulated) surface is outside
    the lung, i.e. the nodule abuts the pleura or the mediastinum.
    """
    reach = spec.extent + margin + float(grid.spacing.max())
    i0 = np.maximum(np.floor((centre - reach - grid.origin) / grid.spacing).astype(int), 0)
    i1 = np.minimum(np.ceil((centre + reach - grid.origin) / grid.spacing).astype(int) + 1, grid.shape)
    if np.any(i1 <= i0):
        return 0.0, True
    x = grid.axis(0)[i0[0] : i1[0], None, None] - centre[0]
    y = grid.axis(1)[None, i0[1] : i1[1], None] - centre[1]
    z = grid.axis(2)[None, None, i0[2] : i1[2]] - centre[2]
    surface, r = spec.surface_and_radius(x, y, z)
    sub = lung[i0[0] : i1[0], i0[1] : i1[1], i0[2] : i1[2]]
    body, near = r <= surface, r <= surface + margin
    touches = not bool(sub[near].all())
    if not body.any():  # smaller than a voxel: test the nearest voxel
        idx = np.clip(np.round((centre - grid.origin) / grid.spacing).astype(int), 0, np.asarray(grid.shape) - 1)
        return float(lung[tuple(idx)]), touches
    return float(sub[body].mean()), touches


def _inward_step(model: ChestModel, p: np.ndarray, target_sd: float) -> np.ndarray:
    """Move ``p`` along the lung-distance gradient so that its signed distance becomes about ``target_sd``."""
    for _ in range(3):
        probes = np.concatenate([p + np.eye(3), p - np.eye(3), p[None]])
        sd = model.lung_sd(probes)[0]
        grad = 0.5 * (sd[:3] - sd[3:6])
        norm = np.linalg.norm(grad)
        if norm < 1e-6:
            break
        p = p + (target_sd - sd[6]) * grad / norm**2
    return p


def _propose(
    rng: np.random.Generator,
    placement: str,
    spec: NoduleSpec,
    model: ChestModel,
    cand: np.ndarray,
    cand_sd: np.ndarray,
    cand_fd: np.ndarray,
    vessels: TubeSet,
) -> np.ndarray | None:
    extent = spec.extent
    if placement == "perifissural":
        pool = np.flatnonzero((np.abs(cand_fd - spec.radius) < 1.0) & (cand_sd > extent + 2.0))
        return cand[int(rng.choice(pool))] if len(pool) else None
    if placement == "juxtavascular" and len(vessels):
        r_mid = 0.5 * (vessels.ra + vessels.rb)
        mid = 0.5 * (vessels.a + vessels.b)
        ok = np.flatnonzero((r_mid >= 0.8) & (r_mid <= 3.5) & (model.lung_sd(mid)[0] > extent + r_mid + 3.0))
        if not len(ok):
            return None
        i = int(rng.choice(ok))
        a, b, r = vessels.a[i], vessels.b[i], float(r_mid[i])
        point = a + rng.uniform(0.2, 0.8) * (b - a)
        axis = (b - a) / max(float(np.linalg.norm(b - a)), 1e-9)
        e = rng.standard_normal(3)
        e -= (e @ axis) * axis
        e /= max(float(np.linalg.norm(e)), 1e-9)
        return point + e * (r + spec.radius * rng.uniform(0.7, 0.95))
    if placement == "juxtapleural":
        pool = np.flatnonzero((cand_sd > spec.radius - 1.0) & (cand_sd < spec.radius + _BAND_MM))
        if not len(pool):
            return None
        p = cand[int(rng.choice(pool))] + rng.uniform(-1.0, 1.0, 3)
        return _inward_step(model, p, spec.radius + rng.uniform(0.0, 1.0))
    pool = np.flatnonzero(cand_sd > extent + 2.0)
    if not len(pool):
        return None
    return cand[int(rng.choice(pool))]


def place_findings(
    rng: np.random.Generator,
    specs: list[NoduleSpec],
    model: ChestModel,
    grid: RenderGrid,
    lung: np.ndarray,
    vessels: TubeSet,
) -> list[NoduleSpec]:
    """Give each finding a centre (in place) and return those that could be placed, in input order.

    Args:
        rng: random generator.
        specs: findings to place, largest first is best (order is kept in the result).
        model: the chest.
        grid: render grid.
        lung: (X, Y, Z) bool rendered lung mask on ``grid``.
        vessels: pulmonary vessel segments (for juxtavascular placement and vessel clearance).

    Returns:
        The placed findings; ``placement`` is updated when a fallback position was used.
    """
    cand, cand_sd = _candidates(rng, model, grid)
    cand_fd = model.fissure_distance(cand)
    big = vessels.subset(0.5 * (vessels.ra + vessels.rb) >= 1.0) if len(vessels) else vessels
    placed: list[NoduleSpec] = []
    for spec in sorted(specs, key=lambda s: -s.diameter):
        extent = spec.extent
        for attempt in range(_TRIES):
            placement = spec.placement if attempt < _TRIES // 2 else "isolated"
            c = _propose(rng, placement, spec, model, cand, cand_sd, cand_fd, vessels)
            if c is None or not grid.contains(c[None])[0]:
                continue
            if any(np.linalg.norm(c - o.centre) < extent + o.extent + 3.0 for o in placed):
                continue
            inside, touches = _lung_contact(lung, grid, spec, c, margin=_TOUCH_MM)
            if inside < 0.97:
                continue
            free = placement in ("isolated", "perifissural")
            if (placement == "juxtapleural" and not touches) or (free and touches):
                continue
            if free and point_to_tubes_distance(c[None], big)[0] < extent + 1.5:
                continue
            spec.centre, spec.placement = c, placement
            placed.append(spec)
            break
        else:
            logger.debug("could not place a %.1f mm %s nodule; dropped", spec.diameter, spec.kind)
    order = {id(s): i for i, s in enumerate(specs)}
    return sorted(placed, key=lambda s: order[id(s)])
