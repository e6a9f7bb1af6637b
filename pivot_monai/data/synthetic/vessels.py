"""Pulmonary vessel and airway trees, and the mediastinal great vessels, as tapered tube segments.

Each lung gets an arterial and a venous tree grown by *space colonisation*: attraction points are scattered
uniformly through the lung, every point pulls its nearest tree node, each pulled node grows one step towards the
mean pull, and points are consumed once a node comes close. This fills the lung the way real vascular trees do
(branching where the pulls diverge, reaching to within a few mm of the pleura). Radii then follow the pipe model
from the leaves up, ``r_parent^g = sum r_child^g`` (Murray's law, ``g`` = 2.7), starting from the preset's leaf
radius (0.45 mm at full resolution) and capped at ~2.5-3.2 mm near the hilum, i.e. diameters taper from 5-6 mm
to about 1 mm, and each terminal branch narrows further to ~0.6 mm at its tip. Attraction points reach to 1 mm
from the pleura, so small vessels fill the periphery.
Airways run beside the arteries (bronchovascular bundles) down to about 1 mm radius, as air-filled tubes with a
wall of ~20 % of their radius.

Axial cross-sections of these tubes look like small round opacities: they are the hard negatives of a nodule
detector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from pivot_monai.data.synthetic.chest_model import SIDES, ChestModel
from pivot_monai.data.synthetic.raster import RenderGrid, TubeSet, rasterize_tubes

__all__ = [
    "TreeParams",
    "VascularTrees",
    "draw_trees",
    "grow_trees",
    "point_to_tubes_distance",
    "sample_lung_points",
]

_MURRAY = 2.7
_AIRWAY_WALL_HU = 10.0


@dataclass(frozen=True)
class TreeParams:
    """Resolution-dependent settings of the tree growth.

    Attributes:
        attractors: attraction points per tree (each lung has two trees).
        step: growth step (mm), the segment length.
        r_min: leaf radius (mm) of the pipe model; terminal segments taper to about half of it.
        airway_r_min: smallest airway radius drawn (mm).
    """

    attractors: int
    step: float
    r_min: float
    airway_r_min: float


@dataclass
class VascularTrees:
    """Everything tubular in one chest.

    Attributes:
        vessels: pulmonary arteries and veins (drawn in ``max`` mode with the blood value).
        airway_wall: outer surface of trachea, bronchi and intrapulmonary airways.
        airway_lumen: their air-filled lumen.
        mediastinal: great vessels and oesophagus (drawn in ``blend`` mode).
    """

    vessels: TubeSet
    airway_wall: TubeSet
    airway_lumen: TubeSet
    mediastinal: TubeSet


def _normalise(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def sample_lung_points(rng: np.random.Generator, model: ChestModel, side: int, n: int, margin: float) -> np.ndarray:
    """(n, 3) points uniform in the lung on ``side`` at least ``margin`` mm from its boundary."""
    s = SIDES[side]
    lo = np.array([model.mx if s > 0 else -model.cav_a, -model.cav_b, 0.0])
    hi = np.array([model.cav_a if s > 0 else model.mx, model.cav_b_post, model.lung_height])
    out: list[np.ndarray] = []
    count = 0
    for _ in range(20):
        pts = rng.uniform(lo, hi, (3 * n, 3))
        sd, which = model.lung_sd(pts)
        pts = pts[(sd > margin) & (which == side)]
        out.append(pts)
        count += len(pts)
        if count >= n:
            break
    return np.concatenate(out)[:n]


def _root(model: ChestModel, start: np.ndarray, side: int) -> np.ndarray:
    """First point 2 mm inside the lung going laterally from a hilum."""
    path = start + np.outer(np.arange(0.0, 80.0, 1.0), [SIDES[side], 0.0, 0.0])
    sd = model.lung_sd(path)[0]
    inside = np.flatnonzero(sd > 2.0)
    return path[inside[0]] if len(inside) else path[-1]


def _colonise(
    rng: np.random.Generator,
    model: ChestModel,
    root: np.ndarray,
    attractors: np.ndarray,
    step: float,
    max_iter: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """Grow one tree from ``root`` towards ``attractors``: ``(nodes (N, 3), parent (N,))``, parent -1 at the root."""
    kill = 2.2 * step  # attractors closer than this to a node are consumed
    all_nodes, all_heading = root[None], np.zeros((1, 3))
    parents = [np.array([-1])]
    n_nodes = 1
    dist = np.linalg.norm(attractors - root, axis=1)  # each attractor's distance to its nearest node
    nearest = np.zeros(len(attractors), dtype=int)
    alive = dist > kill
    for _ in range(max_iter):
        idx = np.flatnonzero(alive)
        if not len(idx):
            break
        pull = _normalise(attractors[idx] - all_nodes[nearest[idx]])
        sums = np.zeros((n_nodes, 3))
        np.add.at(sums, nearest[idx], pull)
        active = np.flatnonzero(np.any(sums != 0.0, axis=1))
        d = _normalise(_normalise(sums[active]) + 0.35 * all_heading[active])
        new = all_nodes[active] + step * d + rng.normal(0.0, 0.12 * step, (len(active), 3))
        ok = model.lung_sd(new)[0] > 0.8
        if not ok.all():  # attractors pulling a node out of the lung are dropped, half at a time
            stuck = np.isin(nearest, active[~ok]) & alive
            alive &= ~(stuck & (rng.random(len(alive)) < 0.5))
        if not ok.any():
            continue
        new, d, par = new[ok], d[ok], active[ok]
        first = n_nodes
        all_nodes = np.concatenate([all_nodes, new])
        all_heading = np.concatenate([all_heading, d])
        parents.append(par)
        n_nodes += len(new)
        tree = cKDTree(new)
        dnew, inew = tree.query(attractors[idx], distance_upper_bound=dist[idx].max() + 1.0)
        closer = dnew < dist[idx]
        dist[idx[closer]] = dnew[closer]
        nearest[idx[closer]] = first + inew[closer]
        alive &= dist > kill
    return all_nodes, np.concatenate(parents)


def _pipe_radii(parent: np.ndarray, r_leaf: float, r_cap: float) -> np.ndarray:
    """Node radii from the pipe model: ``r^g`` of ``r_leaf`` leaves summed towards the root, capped at ``r_cap``.

    Leaf nodes themselves get ``0.7 r_leaf`` so that terminal branches taper towards their tip.
    """
    acc = [0.0] * len(parent)
    par = parent.tolist()
    leaf = r_leaf**_MURRAY
    for i in range(len(par) - 1, -1, -1):  # children always come after their parent
        if acc[i] == 0.0:
            acc[i] = leaf
        if par[i] >= 0:
            acc[par[i]] += acc[i]
    radius = np.minimum(np.asarray(acc) ** (1.0 / _MURRAY), r_cap)
    is_leaf = np.ones(len(par), dtype=bool)
    is_leaf[parent[parent >= 0]] = False
    radius[is_leaf] *= 0.7
    return radius


def _airways(
    rng: np.random.Generator, nodes: np.ndarray, parent: np.ndarray, radius: np.ndarray, r_min: float, start: np.ndarray
) -> TubeSet:
    """Airways beside an arterial tree: offset copies of its segments with radius >= ``r_min``, from ``start``."""
    n = len(nodes)
    seg_dir = np.zeros((n, 3))
    seg_dir[1:] = _normalise(nodes[1:] - nodes[parent[1:]])
    offset = np.zeros((n, 3))
    offset[0] = _normalise(rng.standard_normal(3))
    ratio = np.clip(rng.normal(1.0, 0.1, n), 0.8, 1.25)
    points = np.zeros((n, 3))
    points[0] = start
    r_aw = radius * ratio
    rows = []
    for i in range(1, n):
        p = parent[i]
        o = offset[p] - (offset[p] @ seg_dir[i]) * seg_dir[i]
        offset[i] = o / max(float(np.linalg.norm(o)), 1e-9)
        points[i] = nodes[i] + offset[i] * (radius[i] + r_aw[i] + 0.5)
        if r_aw[i] >= r_min:
            rows.append((points[p], points[i], r_aw[p], r_aw[i]))
    if not rows:
        return TubeSet.empty()
    a, b, ra, rb = (np.array(v) for v in zip(*rows))
    return TubeSet(a, b, np.minimum(ra, 1.15 * rb), rb, np.full(len(rows), _AIRWAY_WALL_HU))


def grow_trees(rng: np.random.Generator, model: ChestModel, params: TreeParams, density: float = 1.0) -> VascularTrees:
    """Grow both lungs' arterial and venous trees with their airways and collect the mediastinal tubes.

    Args:
        rng: the scan's random generator.
        model: the chest.
        params: attractor count, step and minimum radii (resolution dependent).
        density: multiplier on ``params.attractors`` (the patient's vessel density; see
            :class:`~pivot_monai.data.synthetic.domains.Domain`).

    Returns:
        The :class:`VascularTrees` of the chest.
    """
    blood = model.tissue.blood
    vessels, airways = TubeSet.empty(), TubeSet.empty()
    bronchus_end = [model.hilum[s] + np.array([0.0, 7.0, 5.0]) for s in (0, 1)]
    for side in (0, 1):
        for artery, hilum in ((True, model.hilum[side]), (False, model.vein_hilum[side])):
            root = _root(model, hilum, side)
            # attraction points up to 1 mm from the pleura: the trees reach the lung periphery, as in real CT
            attractors = sample_lung_points(rng, model, side, int(params.attractors * density), margin=1.0)
            nodes, parent = _colonise(rng, model, root, attractors, params.step)
            r_cap = rng.uniform(2.5, 3.2)
            radius = _pipe_radii(parent, params.r_min, r_cap)
            child = np.arange(1, len(nodes))
            r_start = np.minimum(radius[parent[child]], 1.15 * radius[child])
            vessels = vessels.concat(
                TubeSet(nodes[parent[child]], nodes[child], r_start, radius[child], np.full(len(child), blood))
            )
            vessels = vessels.concat(
                TubeSet.from_polyline(np.stack([hilum, root]), np.array([r_cap + 0.5, r_cap]), blood)
            )
            if artery:
                airways = airways.concat(_airways(rng, nodes, parent, radius, params.airway_r_min, bronchus_end[side]))
    vessels = vessels.concat(_hilar_veins(model))
    wall, lumen = _central_airways(model, np.stack(bronchus_end))
    wall = wall.concat(airways)
    lumen = lumen.concat(airways.with_radius(scale=0.8, offset=-0.1, value=-1000.0))
    return VascularTrees(vessels, wall, lumen, _mediastinal_tubes(model))


def _hilar_veins(model: ChestModel) -> TubeSet:
    """Pulmonary veins from each lower hilum to the left atrium."""
    tubes = TubeSet.empty()
    for side in (0, 1):
        tubes = tubes.concat(
            TubeSet.from_polyline(
                np.stack([model.vein_hilum[side], model.left_atrium]), np.array([4.0, 6.0]), model.tissue.blood
            )
        )
    return tubes


def _central_airways(model: ChestModel, bronchus_end: np.ndarray) -> tuple[TubeSet, TubeSet]:
    """Trachea and main bronchi: (outer wall, lumen)."""
    trachea = model.capsule("trachea")
    carina = trachea.b
    wall = TubeSet.from_polyline(np.stack([trachea.a, carina]), np.array([trachea.r, trachea.r]), _AIRWAY_WALL_HU)
    for side, r in ((0, 0.75 * trachea.r), (1, 0.65 * trachea.r)):
        pts = np.stack([carina, 0.5 * (carina + bronchus_end[side]) + np.array([0.0, 0.0, -4.0]), bronchus_end[side]])
        wall = wall.concat(TubeSet.from_polyline(pts, np.array([0.85 * trachea.r, r, 0.8 * r]), _AIRWAY_WALL_HU))
    lumen = wall.with_radius(offset=-model.trachea_wall, value=-1000.0)
    return wall, lumen


def _mediastinal_tubes(model: ChestModel) -> TubeSet:
    """Great vessels and oesophagus from the model's capsules (the trachea is drawn with the airways)."""
    tubes = TubeSet.empty()
    for cap in model.capsules:
        if cap.name == "trachea":
            continue
        value = model.tissue.muscle if cap.name == "oesophagus" else model.tissue.blood
        tubes = tubes.concat(TubeSet.from_polyline(np.stack([cap.a, cap.b]), np.array([cap.r, cap.r]), value))
    return tubes


def draw_trees(hu: np.ndarray, grid: RenderGrid, trees: VascularTrees) -> None:
    """Draw great vessels, airways (walls, then lumens) and pulmonary vessels into ``hu`` in place."""
    rasterize_tubes(hu, grid, trees.mediastinal, mode="blend")
    rasterize_tubes(hu, grid, trees.airway_wall, mode="blend")
    rasterize_tubes(hu, grid, trees.airway_lumen, mode="blend")
    rasterize_tubes(hu, grid, trees.vessels, mode="max")


def point_to_tubes_distance(points: np.ndarray, tubes: TubeSet) -> np.ndarray:
    """(N,) distance from each point (N, 3) to the surface of the nearest tube (negative inside a tube)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    out = np.full(len(pts), np.inf)
    if not len(tubes):
        return out
    ab = tubes.b - tubes.a
    length2 = np.maximum(np.sum(ab * ab, axis=1), 1e-12)
    for i, p in enumerate(pts):
        t = np.clip(np.sum((p - tubes.a) * ab, axis=1) / length2, 0.0, 1.0)
        d = np.linalg.norm(p - (tubes.a + t[:, None] * ab), axis=1) - (tubes.ra + t * (tubes.rb - tubes.ra))
        out[i] = d.min()
    return out
