"""Rendering grid and partial-volume rasterisation primitives shared by the synthetic-CT modules.

Everything is drawn in a *canonical* grid: identity direction, index axes ``(x, y, z)`` along the patient-local
LPS axes, coordinates in mm. Partial volume is modelled in two ways:

* analytic shapes get a linear edge ramp whose width is the voxel size across the edge (``h`` in-plane, the slice
  thickness ``T`` along z, mixed by the z-component of the surface normal) — the exact box-filter response of a
  planar edge;
* small structures (tubes, nodules) are evaluated at ``n_sub`` points spread over the slice thickness and
  averaged, which reproduces thick-slice blurring of objects smaller than a slice.

Small objects are only ever evaluated inside their own bounding box (:meth:`RenderGrid.box`), which keeps the
cost proportional to the object, not to the volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "RenderGrid",
    "TubeSet",
    "capsule_distance",
    "edge_width",
    "egg_sd",
    "ellipse_sd",
    "ellipsoid_sd",
    "ramp",
    "rasterize_tubes",
    "superellipse_sd",
]

_EPS = 1e-6
# box edge lengths (voxels) that segment boxes are rounded up to when batching them
_BOX_SIZES = np.array(
    [
        1,
        2,
        3,
        4,
        5,
        6,
        8,
        10,
        12,
        14,
        16,
        20,
        24,
        28,
        32,
        40,
        48,
        56,
        64,
        80,
        96,
        112,
        128,
        160,
        192,
        224,
        256,
        320,
        384,
        448,
        512,
        640,
        768,
        1024,
        2048,
        4096,
    ]
)


@dataclass(frozen=True)
class RenderGrid:
    """A canonical (identity-direction) voxel grid in patient-local mm.

    Args:
        origin: local position (mm) of voxel ``(0, 0, 0)``.
        spacing: voxel size (mm) along ``(x, y, z)``.
        shape: number of voxels along ``(x, y, z)``.
        thickness: reconstructed slice thickness (mm); at least the z spacing for overlapping reconstructions.
    """

    origin: np.ndarray
    spacing: np.ndarray
    shape: tuple[int, int, int]
    thickness: float
    _axes: tuple[np.ndarray, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin", np.asarray(self.origin, dtype=np.float64).reshape(3))
        object.__setattr__(self, "spacing", np.asarray(self.spacing, dtype=np.float64).reshape(3))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if np.any(self.spacing <= 0) or min(self.shape) < 1 or self.thickness <= 0:
            raise ValueError(
                f"RenderGrid needs positive spacing, shape and thickness, got spacing="
                f"{self.spacing.tolist()}, shape={self.shape}, thickness={self.thickness}"
            )
        axes = tuple((self.origin[a] + self.spacing[a] * np.arange(self.shape[a])).astype(np.float32) for a in range(3))
        object.__setattr__(self, "_axes", axes)

    @property
    def h(self) -> float:
        """In-plane voxel size (mm): the edge-ramp width for in-plane edges."""
        return float(max(self.spacing[0], self.spacing[1]))

    @property
    def n_sub(self) -> int:
        """Sub-samples per slice used for small objects: enough that they are ``<= h`` apart, at most 4."""
        return int(np.clip(np.ceil(self.thickness / self.h), 1, 4))

    @property
    def z_offsets(self) -> np.ndarray:
        """(n_sub,) z offsets (mm) of the sub-samples, spread uniformly over the slice thickness."""
        n = self.n_sub
        return (((np.arange(n) + 0.5) / n - 0.5) * self.thickness).astype(np.float32)

    def axis(self, a: int) -> np.ndarray:
        """Voxel-centre coordinates (mm, float32) along axis ``a``."""
        return self._axes[a]

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres (z widened by half a slice) fall in ``[lo, hi]`` mm, or None."""
        lo = np.asarray(lo, dtype=np.float64).copy()
        hi = np.asarray(hi, dtype=np.float64).copy()
        lo[2] -= 0.5 * self.thickness
        hi[2] += 0.5 * self.thickness
        i0 = np.maximum(np.ceil((lo - self.origin) / self.spacing), 0).astype(int)
        i1 = np.minimum(np.floor((hi - self.origin) / self.spacing) + 1, self.shape).astype(int)
        if np.any(i1 <= i0):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(i0, i1))  # type: ignore[return-value]

    def box_coords(
        self, box: tuple[slice, slice, slice], subsample: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable coordinates of a box: ``x (X,1,1,1)``, ``y (1,Y,1,1)``, ``z (1,1,Z,S)`` (S sub-samples)."""
        x = self._axes[0][box[0]].reshape(-1, 1, 1, 1)
        y = self._axes[1][box[1]].reshape(1, -1, 1, 1)
        z = self._axes[2][box[2]].reshape(1, 1, -1, 1)
        if subsample:
            z = z + self.z_offsets.reshape(1, 1, 1, -1)
        return x, y, z

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(N,) whether local points ``(N, 3)`` lie inside the grid's field of view."""
        idx = (np.asarray(points, dtype=np.float64).reshape(-1, 3) - self.origin) / self.spacing
        return np.all((idx >= 0) & (idx <= np.asarray(self.shape) - 1), axis=1)


def ramp(sd: np.ndarray, width: float | np.ndarray) -> np.ndarray:
    """Partial-volume occupancy of a voxel whose centre is ``sd`` mm inside an edge (negative: outside)."""
    return np.clip(0.5 + sd / width, 0.0, 1.0)


def edge_width(h: float, thickness: float, nz: np.ndarray | float) -> np.ndarray | float:
    """Ramp width (mm) of an edge whose unit normal has z-component ``nz``: ``h`` in-plane, ``thickness`` along z."""
    nz2 = np.minimum(np.square(nz), 1.0)
    return np.sqrt(h * h * (1.0 - nz2) + thickness * thickness * nz2)


def ellipse_sd(dx: np.ndarray, dy: np.ndarray, a: float, b: float) -> np.ndarray:
    """Approximate signed distance (mm, positive inside) to the ellipse with semi-axes ``a``, ``b`` at the origin.

    First-order estimate ``f / |grad f|`` of ``f = 1 - rho``; exact on the boundary and along the axes, and a
    smooth, slightly conservative estimate elsewhere.
    """
    return _ellipse_sd(dx, dy, a, b, _EPS / min(a, b))


def _ellipse_sd(dx: np.ndarray, dy: np.ndarray, a: float, b: Any, eps: Any) -> np.ndarray:
    u = dx / a
    v = dy / b
    rho = np.sqrt(u * u + v * v)
    g = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return (1.0 - rho) * (rho + _EPS) / (g + eps)


def egg_sd(dx: np.ndarray, dy: np.ndarray, a: float, b_neg: float, b_pos: float) -> np.ndarray:
    """:func:`ellipse_sd` of an ellipse whose y semi-axis is ``b_neg`` for ``dy < 0`` and ``b_pos`` otherwise."""
    # one pass with a per-point semi-axis, in the dtype a scalar one would take: the same values as evaluating both
    # halves and picking one, at half the cost
    dy = np.asarray(dy)
    dtype = dy.dtype if np.issubdtype(dy.dtype, np.floating) else np.float64
    b = np.where(dy < 0, b_neg, b_pos)  # float64, as the scalar semi-axis is
    return _ellipse_sd(dx, dy, a, b.astype(dtype), (_EPS / np.minimum(a, b)).astype(dtype))


def superellipse_sd(dx: np.ndarray, dy: np.ndarray, a: float, b: float, p: float) -> np.ndarray:
    """Approximate signed distance (mm, positive inside) to ``|x/a|^p + |y/b|^p = 1`` (``p`` > 2 is boxier)."""
    u, v = np.abs(dx) / a + _EPS, np.abs(dy) / b + _EPS
    rho = (u**p + v**p) ** (1.0 / p)
    grad = rho ** (1.0 - p) * np.sqrt((u ** (p - 1.0) / a) ** 2 + (v ** (p - 1.0) / b) ** 2)
    return (1.0 - rho) / grad


def ellipsoid_sd(
    dx: np.ndarray, dy: np.ndarray, dz: np.ndarray | float, a: float, b: float, c: float
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate signed distance (mm, positive inside) to an axis-aligned ellipsoid, and the normal's z-component.

    Returns:
        ``(sd, nz)`` broadcast over the inputs.
    """
    u, v, w = dx / a, dy / b, dz / c
    rho = np.sqrt(u * u + v * v + w * w)
    g = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
    sd = (1.0 - rho) * (rho + _EPS) / (g + _EPS / min(a, b, c))
    nz = np.abs(w / c) / (g + _EPS)
    return sd, nz


def capsule_distance(
    x: np.ndarray, y: np.ndarray, z: np.ndarray | float, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance from points to the segment ``a -> b``, the segment parameter ``t`` in [0, 1] and the normal's |z|.

    Args:
        x, y, z: broadcastable point coordinates (mm).
        a, b: (3,) segment end points (mm).

    Returns:
        ``(dist, t, nz)`` broadcast over the inputs.
    """
    ax, ay, az = (float(v) for v in a)  # python floats keep float32 inputs in float32
    abx, aby, abz = (float(v) for v in np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64))
    length2 = max(abx * abx + aby * aby + abz * abz, 1e-12)
    px, py, pz = x - ax, y - ay, z - az
    t = np.clip((px * abx + py * aby + pz * abz) / length2, 0.0, 1.0)
    qx, qy, qz = px - t * abx, py - t * aby, pz - t * abz
    dist = np.sqrt(qx * qx + qy * qy + qz * qz)
    return dist, t, np.abs(qz) / (dist + _EPS)


@dataclass
class TubeSet:
    """Tapered cylinder segments (capsules) with a per-segment HU value.

    Attributes:
        a, b: (N, 3) segment end points (mm, local frame).
        ra, rb: (N,) radius at ``a`` and ``b`` (mm).
        value: (N,) HU the tube is filled with.
    """

    a: np.ndarray
    b: np.ndarray
    ra: np.ndarray
    rb: np.ndarray
    value: np.ndarray

    @classmethod
    def empty(cls) -> TubeSet:
        z3, z1 = np.zeros((0, 3)), np.zeros(0)
        return cls(z3, z3.copy(), z1, z1.copy(), z1.copy())

    @classmethod
    def from_polyline(cls, points: np.ndarray, radii: np.ndarray, value: float) -> TubeSet:
        """Consecutive capsules through ``points (P, 3)`` with radii ``(P,)``."""
        pts = np.asarray(points, dtype=np.float64)
        rad = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(pts),))
        n = len(pts) - 1
        return cls(pts[:-1], pts[1:], rad[:-1], rad[1:], np.full(n, float(value)))

    def __len__(self) -> int:
        return len(self.ra)

    def concat(self, other: TubeSet) -> TubeSet:
        return TubeSet(
            np.concatenate([self.a, other.a]),
            np.concatenate([self.b, other.b]),
            np.concatenate([self.ra, other.ra]),
            np.concatenate([self.rb, other.rb]),
            np.concatenate([self.value, other.value]),
        )

    def subset(self, keep: np.ndarray) -> TubeSet:
        return TubeSet(self.a[keep], self.b[keep], self.ra[keep], self.rb[keep], self.value[keep])

    def with_radius(self, scale: float = 1.0, offset: float = 0.0, value: float | None = None) -> TubeSet:
        """Same centre lines with radii ``r * scale + offset`` (clipped at 0) and optionally a new value."""
        vals = self.value if value is None else np.full(len(self), float(value))
        return TubeSet(
            self.a, self.b, np.maximum(self.ra * scale + offset, 0.0), np.maximum(self.rb * scale + offset, 0.0), vals
        )


def _tube_occupancy(grid: RenderGrid, tubes: TubeSet, budget: int = 3_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Partial-volume occupancy of the union of ``tubes``: ``(flat voxel indices, occupancy in (0, 1])``.

    Segments are grouped by bounding-box shape and evaluated in vectorised chunks sharing one box, so tens of
    thousands of short vessel segments cost about as much as a few large arrays.
    """
    h, shape = grid.h, np.asarray(grid.shape)
    pad = np.maximum(tubes.ra, tubes.rb)[:, None] + h
    lo = np.minimum(tubes.a, tubes.b) - pad
    hi = np.maximum(tubes.a, tubes.b) + pad
    lo[:, 2] -= 0.5 * grid.thickness
    hi[:, 2] += 0.5 * grid.thickness
    i0 = np.maximum(np.ceil((lo - grid.origin) / grid.spacing), 0).astype(int)
    i1 = np.minimum(np.floor((hi - grid.origin) / grid.spacing) + 1, shape).astype(int)
    dims = i1 - i0
    keep = np.all(dims > 0, axis=1) & (np.maximum(tubes.ra, tubes.rb) > 0)
    # group segments by box shape (rounded up to a few sizes) so a chunk never pads to a much larger box
    rounded = _BOX_SIZES[np.searchsorted(_BOX_SIZES, np.maximum(dims, 1))]
    shapes, group = np.unique(rounded[keep], axis=0, return_inverse=True)
    members = np.flatnonzero(keep)
    offsets, n_sub = grid.z_offsets, grid.n_sub
    acc = np.zeros(int(np.prod(shape)), dtype=np.uint8)
    for g, box in enumerate(shapes):
        seg = members[group.reshape(-1) == g]
        step = max(1, budget // (int(np.prod(box)) * n_sub))
        for start in range(0, len(seg), step):
            _accumulate(acc, grid, tubes, seg[start : start + step], i0, box, offsets)
    where = np.flatnonzero(acc)
    return where, acc[where].astype(np.float32) / 255.0


def _accumulate(
    acc: np.ndarray,
    grid: RenderGrid,
    tubes: TubeSet,
    idx: np.ndarray,
    i0: np.ndarray,
    box: np.ndarray,
    offsets: np.ndarray,
) -> None:
    """Occupancy of segments ``idx`` in boxes of shape ``box`` starting at ``i0``, max-accumulated into ``acc``."""
    h, shape = grid.h, np.asarray(grid.shape)
    ix = i0[idx, 0, None] + np.arange(box[0])  # (N, bx)
    iy = i0[idx, 1, None] + np.arange(box[1])
    iz = i0[idx, 2, None] + np.arange(box[2])
    x = grid.axis(0)[np.minimum(ix, shape[0] - 1)][:, :, None, None, None]
    y = grid.axis(1)[np.minimum(iy, shape[1] - 1)][:, None, :, None, None]
    z = grid.axis(2)[np.minimum(iz, shape[2] - 1)][:, None, None, :, None] + offsets
    a = tubes.a[idx].astype(np.float32)[:, :, None, None, None, None]
    ab = (tubes.b[idx] - tubes.a[idx]).astype(np.float32)[:, :, None, None, None, None]
    length2 = np.maximum(np.sum(ab * ab, axis=1), 1e-12)
    px, py, pz = x - a[:, 0], y - a[:, 1], z - a[:, 2]
    t = np.clip((px * ab[:, 0] + py * ab[:, 1] + pz * ab[:, 2]) / length2, 0.0, 1.0)
    dist = np.sqrt((px - t * ab[:, 0]) ** 2 + (py - t * ab[:, 1]) ** 2 + (pz - t * ab[:, 2]) ** 2)
    ra = tubes.ra[idx].astype(np.float32)[:, None, None, None, None]
    r = ra + t * (tubes.rb[idx].astype(np.float32)[:, None, None, None, None] - ra)
    # thin tubes: damp the ramp so the cross-section integral stays ~pi r^2 instead of ~h^2
    occ = (ramp(r - dist, h) * np.minimum(1.0, 2.0 * r / h)).mean(axis=4)
    inside = (
        (ix < shape[0])[:, :, None, None]
        & (iy < shape[1])[:, None, :, None]
        & (iz < shape[2])[:, None, None, :]
        & (occ > 0.002)
    )
    flat = (ix[:, :, None, None] * shape[1] + iy[:, None, :, None]) * shape[2] + iz[:, None, None, :]
    np.maximum.at(acc, flat[inside], np.round(occ[inside] * 255.0).astype(np.uint8))


def rasterize_tubes(hu: np.ndarray, grid: RenderGrid, tubes: TubeSet, mode: str = "max") -> None:
    """Draw tubes into ``hu`` (X, Y, Z float32, in place) with partial volume.

    Segments with the same value are drawn as one union (maximum occupancy), so overlapping joints of a chain do
    not show.

    Args:
        hu: C-contiguous volume on ``grid``.
        grid: the canonical render grid.
        tubes: segments to draw; segments with zero radius are skipped.
        mode: ``"max"`` keeps the brighter of the old value and the blend (vessels crossing bone stay bone),
            ``"blend"`` replaces the old value in proportion to the occupancy (walls, lumens, great vessels).

    Raises:
        ValueError: unknown ``mode`` or a volume of the wrong shape.
    """
    if mode not in ("max", "blend"):
        raise ValueError(f"rasterize_tubes mode must be 'max' or 'blend', got {mode!r}")
    if hu.shape != grid.shape or not hu.flags.c_contiguous:
        raise ValueError(
            f"rasterize_tubes needs a C-contiguous volume of the grid's shape {grid.shape}, got {hu.shape}"
        )
    flat = hu.reshape(-1)
    for value in np.unique(tubes.value):
        where, occ = _tube_occupancy(grid, tubes.subset(tubes.value == value))
        old = flat[where]
        new = old + occ * (np.float32(value) - old)
        flat[where] = np.maximum(old, new) if mode == "max" else new
