"""Render the chest wall, skeleton, mediastinum, abdomen and textured lungs of a :class:`ChestModel`.

The volume is built slice by slice: every z-independent field (body layers, CT table, spine and rib geometry, lung
texture interpolation) is computed once in 2D, and each axial slice only adds what changes with height. Lungs are
computed per side on that side's half of the thoracic cavity's bounding box, which keeps a 512 x 512 x 250
volume at a few seconds. Tubes (great vessels, airways, pulmonary vessels) and nodules are drawn afterwards by
:mod:`~pivot_monai.data.synthetic.vessels` and :mod:`~pivot_monai.data.synthetic.nodules`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pivot_monai.data.synthetic.chest_model import SIDES, ChestModel
from pivot_monai.data.synthetic.raster import (
    RenderGrid,
    capsule_distance,
    edge_width,
    egg_sd,
    ramp,
    superellipse_sd,
)

__all__ = ["render_anatomy"]

_N_RIBS = 12
# angle (rad from the posterior midline) where each rib's bone ends and where its costal cartilage ends
_RIB_BONE_END = np.array([2.45, 2.5, 2.55, 2.55, 2.55, 2.5, 2.45, 2.3, 2.2, 2.1, 1.75, 1.45])
_RIB_CARTILAGE_END = np.array([2.95, 2.95, 2.95, 2.95, 2.95, 2.9, 2.85, 2.75, 2.6, 2.45, 1.75, 1.45])


def _blend(dst: np.ndarray, occ: np.ndarray, value: float | np.ndarray) -> None:
    dst += occ * (value - dst)


def _cavity_box(model: ChestModel, grid: RenderGrid) -> tuple[slice, slice]:
    box = grid.box(
        np.array([-model.cav_a - 5.0, -model.cav_b - 5.0, 0.0]),
        np.array([model.cav_a + 5.0, model.cav_b_post + 5.0, 0.0]),
    )
    if box is None:
        raise ValueError("the thoracic cavity lies outside the render grid; the field of view is too small")
    return box[0], box[1]


def _body_wall(model: ChestModel, grid: RenderGrid) -> np.ndarray:
    """(X, Y) HU of everything that does not change along z: air, CT table, subcutaneous fat, muscle."""
    t, h = model.tissue, grid.h
    x, y = grid.axis(0)[:, None], grid.axis(1)[None, :]
    p_ant, p_post = model.body_p
    body_sd = np.where(
        y < 0,
        superellipse_sd(x, y, model.body_a, model.body_b_ant, p_ant),
        superellipse_sd(x, y, model.body_a, model.body_b_post, p_post),
    )
    angle = np.arctan2(y, x)
    fat_local = model.fat_t * (1.0 + 0.2 * np.cos(2.0 * angle) + 0.15 * np.sin(angle))
    out = np.full(body_sd.shape, -1000.0, dtype=np.float32)
    # CT table: shell, foam core, shell, curving up at the sides
    ty = model.table_y - x * x / (2.0 * model.table_r)
    d = y - ty
    width = ramp(230.0 - np.abs(x), h)
    shell = np.maximum(ramp(np.minimum(d, 2.5 - d), h), ramp(np.minimum(d - 30.0, 32.5 - d), h))
    _blend(out, ramp(np.minimum(d - 2.5, 30.0 - d), h) * width, -900.0)
    _blend(out, shell * width, t.table)
    _blend(out, ramp(body_sd, h), t.fat)
    _blend(out, ramp(body_sd - fat_local, h), t.muscle)
    # an intermuscular fat plane (pectoral / serratus / latissimus layers), interrupted around the body
    depth = body_sd - fat_local - 0.45 * model.muscle_t
    plane = ramp(1.2 - np.abs(depth), h) * np.clip(np.sin(3.0 * angle + 0.7) * 1.5 + 0.3, 0.0, 1.0)
    _blend(out, plane, 0.6 * t.fat)
    return out


def _abdomen_values(model: ChestModel, x: np.ndarray, y: np.ndarray, h: float) -> np.ndarray:
    """(X, Y) HU below the diaphragm: liver on the right (reaching left anteriorly), stomach and spleen on the left."""
    t = model.tissue
    liver_edge = model.mx + 25.0 + 50.0 * np.clip(-y / model.cav_b, 0.0, 1.0)
    spleen = ramp(np.minimum(x - model.mx - 0.45 * model.cav_a, y + 0.1 * model.cav_b), h)
    out = np.full(np.broadcast_shapes(x.shape, y.shape), t.stomach, dtype=np.float32)
    _blend(out, spleen, t.spleen)
    _blend(out, ramp(liver_edge - x, h), t.liver)
    return out


class _Skeleton:
    """z-independent geometry of spine, ribs, sternum and scapulae; :meth:`draw` adds the bones of one slice."""

    def __init__(self, model: ChestModel, grid: RenderGrid) -> None:
        self.m, self.h, self.thick = model, grid.h, grid.thickness
        x, y = grid.axis(0)[:, None], grid.axis(1)[None, :]
        m = model
        # spine, in a box around the vertebra
        back = m.spine_y + m.vb_b + 2 * m.canal_r + m.spinous_len + 10.0
        box = grid.box(np.array([m.mx - 45.0, m.spine_y - m.vb_b - 5.0, 0.0]), np.array([m.mx + 45.0, back, 0.0]))
        self.spine_box = None if box is None else box[:2]
        if self.spine_box is not None:
            sx, sy = x[self.spine_box[0]], y[:, self.spine_box[1]]
            self.vb_sd = m.vertebral_body_sd(sx, sy)
            cy = m.spine_y + m.vb_b + m.canal_r + 1.0
            canal = np.hypot(sx - m.mx, sy - cy)
            self.arch_sd = np.minimum(canal - m.canal_r, m.canal_r + 4.5 - canal)
            spinous = capsule_distance(
                sx,
                sy,
                0.0,
                np.array([m.mx, cy + m.canal_r + 2.0, 0.0]),
                np.array([m.mx, cy + m.canal_r + m.spinous_len, 0.0]),
            )[0]
            self.arch_sd = np.maximum(self.arch_sd, 3.5 - spinous)
            self.transverse_sd = np.full_like(self.vb_sd, -np.inf)
            for s in SIDES:
                d = capsule_distance(sx, sy, 0.0, np.array([m.mx, cy, 0.0]), np.array([m.mx + s * 27.0, cy + 5.0, 0.0]))
                self.transverse_sd = np.maximum(self.transverse_sd, 4.5 - d[0])
        # ribs and scapulae live in a ring around the cavity (which narrows upwards): keep those pixels, flattened
        self.ring = (m.cav_a + 0.5 * m.rib_zone, m.cav_b + 0.5 * m.rib_zone, m.cav_b_post + 0.5 * m.rib_zone)
        self.scap_off = min(8.0, 0.6 * m.muscle_t) + 0.5 * m.rib_zone + 2.5
        radial = -egg_sd(x, y, *self.ring)
        theta = np.arctan2(np.abs(x - m.mx), y)
        theta0 = np.arctan2(m.vb_a + 2.0 * m.canal_r, self.ring[1])
        shrink = m.cav_taper * m.cav_a + 2.0
        band = (radial > -shrink - 0.5 * m.rib_zone - 2.0) & (radial < self.scap_off + 4.0) & (theta > theta0 - 0.05)
        self.ring_idx = np.flatnonzero(band)
        self.ring_x = np.broadcast_to(x, radial.shape)[band]
        self.ring_y = np.broadcast_to(y, radial.shape)[band]
        self.rib_theta = theta[band]
        self.rib_drop = m.rib_drop * np.clip((self.rib_theta - theta0) / (np.pi - theta0), 0.0, 1.0)
        self.scap = (self.rib_theta > 0.4) & (self.rib_theta < 1.3)
        # sternum (its depth follows the anterior chest wall)
        self.sternum_y0 = -(m.cav_b + 0.5 * m.rib_zone)
        box = grid.box(
            np.array([m.mx - 30.0, self.sternum_y0 - 10.0, 0.0]),
            np.array([m.mx + 30.0, self.sternum_y0 * (1.0 - 0.06) + 10.0, 0.0]),
        )
        self.sternum_box = None if box is None else box[:2]
        if self.sternum_box is not None:
            self.sternum_dx = np.abs(x[self.sternum_box[0]] - m.mx)
            self.sternum_y = y[:, self.sternum_box[1]]

    def _bone(self, region: np.ndarray, sd: np.ndarray, width: float | np.ndarray, cortex: float = 1.5) -> None:
        t = self.m.tissue
        _blend(region, ramp(sd, width), t.cortex)
        _blend(region, ramp(sd - cortex, width), t.marrow)

    def draw(self, sl: np.ndarray, z: float) -> None:
        """Add the bones crossing height ``z`` to the axial slice ``sl`` (X, Y float32, in place)."""
        m, h = self.m, self.h
        phase = (z - m.rib_z1) / m.rib_pitch
        frac = phase - np.round(phase)  # 0 at a disc (rib heads articulate there)
        if self.spine_box is not None:
            region = sl[self.spine_box]
            if abs(frac) * m.rib_pitch < 0.5 * m.disc_h:
                _blend(region, ramp(self.vb_sd, h), m.tissue.disc)
            else:
                self._bone(region, self.vb_sd, h)
            level = phase - np.floor(phase)
            if 0.1 < level < 0.85:
                self._bone(region, self.arch_sd, h, cortex=2.0)
            if 0.15 < level < 0.5:
                self._bone(region, self.transverse_sd, h, cortex=2.0)
        sa, sb = m.cavity_scale(z)
        flat = sl.reshape(-1)
        vals = flat[self.ring_idx]
        radial = -egg_sd(self.ring_x / sa, self.ring_y / sb, *self.ring) * min(sa, sb)
        self._draw_ribs(vals, radial, z)
        self._draw_scapulae(vals, radial, z)
        flat[self.ring_idx] = vals
        lo, hi = m.sternum_z
        if self.sternum_box is not None and lo - self.thick < z < hi + self.thick:
            half_w = m.sternum_w + (10.0 if z > hi - 45.0 else 0.0)
            sd = np.minimum(half_w - self.sternum_dx, 5.5 - np.abs(self.sternum_y - self.sternum_y0 * sb))
            occ_z = ramp(min(z - lo, hi - z), self.thick)
            region = sl[self.sternum_box]
            t = m.tissue
            _blend(region, ramp(sd, h) * occ_z, t.cortex)
            _blend(region, ramp(sd - 1.5, h) * occ_z, t.marrow)

    def _draw_ribs(self, vals: np.ndarray, radial: np.ndarray, z: float) -> None:
        m = self.m
        i = np.round((m.rib_z1 - self.rib_drop - z) / m.rib_pitch)
        valid = (i >= 0) & (i < _N_RIBS)
        i = np.clip(i, 0, _N_RIBS - 1).astype(int)
        dz = z - (m.rib_z1 - i * m.rib_pitch - self.rib_drop)
        half_t, half_h = 0.5 * m.rib_t, 0.5 * m.rib_h
        e = np.sqrt((radial / half_t) ** 2 + (dz / half_h) ** 2)
        nz = np.clip(np.abs(dz) / half_h / np.maximum(e, 1e-6), 0.0, 1.0)
        sd = (1.0 - e) * (half_t * (1.0 - nz) + half_h * nz)
        width = edge_width(self.h, self.thick, nz)
        bone = valid & (self.rib_theta <= _RIB_BONE_END[i])
        cartilage = valid & ~bone & (self.rib_theta <= _RIB_CARTILAGE_END[i])
        t = m.tissue
        occ = ramp(sd, width)
        _blend(vals, occ * bone, t.cortex)
        _blend(vals, ramp(sd - 1.2, width) * bone, t.marrow)
        _blend(vals, occ * cartilage, t.cartilage)

    def _draw_scapulae(self, vals: np.ndarray, radial: np.ndarray, z: float) -> None:
        lo, hi = self.m.scapula_z
        if not lo - self.thick < z < hi:
            return
        frac = np.clip((z - lo) / (hi - lo), 0.0, 1.0) ** 0.5
        centre, half = 0.85, 0.45 * frac
        sd = np.minimum(2.0 - np.abs(radial - self.scap_off), (half - np.abs(self.rib_theta - centre)) * 60.0)
        _blend(vals, ramp(sd, self.h) * self.scap, self.m.tissue.cortex * 0.8)


def _texture_field(
    model: ChestModel, grid: RenderGrid, box: tuple[slice, slice], rng: np.random.Generator, cell_mm: float = 6.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Coarse smooth noise for lung texture, with linear interpolation matrices to the fine in-plane box.

    Returns:
        ``(coarse (Cx, Cy, Cz), wx (Bx, Cx), wy (By, Cy), cz (Cz,) coarse z coordinates)``.
    """
    xs, ys = grid.axis(0)[box[0]], grid.axis(1)[box[1]]
    z0, z1 = grid.axis(2)[0], grid.axis(2)[-1]
    axes = [np.arange(v[0] - cell_mm, v[-1] + 2 * cell_mm, cell_mm) for v in (xs, ys, np.array([z0, z1]))]
    shape = tuple(len(a) for a in axes)
    fine = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0, mode="wrap")
    broad = ndimage.gaussian_filter(rng.standard_normal(shape), 2.5, mode="wrap")
    field = fine / fine.std() + 1.2 * broad / broad.std()
    field *= model.tissue.lung_texture_std / field.std()

    def weights(fine_x: np.ndarray, coarse_x: np.ndarray) -> np.ndarray:
        pos = (fine_x - coarse_x[0]) / cell_mm
        j = np.clip(np.floor(pos).astype(int), 0, len(coarse_x) - 2)
        f = (pos - j).astype(np.float32)
        w = np.zeros((len(fine_x), len(coarse_x)), dtype=np.float32)
        w[np.arange(len(fine_x)), j] = 1.0 - f
        w[np.arange(len(fine_x)), j + 1] = f
        return w

    return field.astype(np.float32), weights(xs, axes[0]), weights(ys, axes[1]), axes[2]


class _Torso:
    """Soft tissue and lungs inside the thoracic cavity's bounding box; :meth:`draw` fills one axial slice."""

    def __init__(self, model: ChestModel, grid: RenderGrid, rng: np.random.Generator) -> None:
        self.m, self.h, self.thick = model, grid.h, grid.thickness
        self.bx, self.by = _cavity_box(model, grid)
        self.x, self.y = grid.axis(0)[self.bx, None], grid.axis(1)[None, self.by]
        self.abdomen = _abdomen_values(model, self.x, self.y, self.h)
        self.diaphragm = model.diaphragm_z(self.x, self.y)
        depth = (self.y + model.cav_b) / (model.cav_b + model.cav_b_post)
        self.gravity = model.tissue.lung_gradient * np.clip(depth, 0.0, 1.0) ** 2  # dependent lung is denser
        self.texture = _texture_field(model, grid, (self.bx, self.by), rng)
        self.halves = [np.flatnonzero(s * (self.x[:, 0] - model.mx) > -2.0) for s in SIDES]
        self.bubble = np.array([model.dome_x, model.dome_y - 10.0, model.dome_top[1] - 22.0])

    def draw(self, sl: np.ndarray, z: float, lung_out: np.ndarray) -> None:
        """Draw cavity contents at height ``z`` into slice ``sl`` (X, Y) and the lung mask into ``lung_out`` (X, Y)."""
        m, h, thick, x, y = self.m, self.h, self.thick, self.x, self.y
        t = m.tissue
        cav = sl[self.bx, self.by]  # a view
        cav_occ = ramp(m.cavity_sd(x, y, z), h)
        _blend(cav, cav_occ, t.muscle - 8.0)
        above = ramp(z - self.diaphragm, thick)
        band = np.minimum(
            ramp(m.band_halfwidth(z, 0, y) + 6.0 - (m.mx - x), h), ramp(m.band_halfwidth(z, 1, y) + 6.0 - (x - m.mx), h)
        )
        in_chest = ramp(z - min(m.dome_top) + 5.0, thick) * ramp(m.lung_height + 40.0 - z, thick)
        _blend(cav, band * cav_occ * above * in_chest, t.mediastinal_fat)
        if abs(z - m.heart_c[2]) < m.heart_r[2] + thick:
            sd, nz = m.heart_sd(x, y, z)
            _blend(cav, ramp(sd, edge_width(h, thick, nz)) * cav_occ, t.blood)
        below = ramp(self.diaphragm - 3.0 - z, thick) * cav_occ
        if float(below.max()) > 0.0:
            _blend(cav, below, self.abdomen)
            c = self.bubble
            if m.gastric_bubble and abs(z - c[2]) < 14.0:  # gastric fundus gas under the left dome
                d = np.sqrt(((x - c[0]) / 28.0) ** 2 + ((y - c[1]) / 20.0) ** 2 + ((z - c[2]) / 12.0) ** 2)
                _blend(cav, ramp((1.0 - d) * 18.0, h) * below * ramp(z - c[2] + 3.0, thick), -1000.0)
        if -5.0 < z < m.lung_height + 5.0:
            self._lungs(cav, z, lung_out[self.bx, self.by])

    def _lungs(self, cav: np.ndarray, z: float, mask: np.ndarray) -> None:
        coarse, wx, wy, cz = self.texture
        j = int(np.clip(np.searchsorted(cz, z) - 1, 0, len(cz) - 2))
        f = np.float32((z - cz[j]) / (cz[1] - cz[0]))
        value = self.m.tissue.lung + self.gravity + wx @ ((1.0 - f) * coarse[:, :, j] + f * coarse[:, :, j + 1]) @ wy.T
        for side, idx in enumerate(self.halves):
            if len(idx) == 0:
                continue
            occ = self.m.lung_occupancy(self.x[idx], self.y, z, self.h, self.thick, sides=(side,))
            region = cav[idx]
            _blend(region, occ, value[idx])
            cav[idx] = region
            mask[idx] |= occ > 0.5


def render_anatomy(model: ChestModel, grid: RenderGrid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render the static anatomy of ``model`` on ``grid``.

    Args:
        model: the chest (patient-local frame).
        grid: canonical render grid in the same frame.
        rng: random generator for the lung texture.

    Returns:
        ``(hu, lung)``: (X, Y, Z) float32 HU and (X, Y, Z) bool lung mask (lung occupancy > 0.5).
    """
    base = _body_wall(model, grid)
    torso = _Torso(model, grid, rng)
    bones = _Skeleton(model, grid)
    hu = np.empty(grid.shape, dtype=np.float32)
    lung = np.zeros(grid.shape, dtype=bool)
    for k, z in enumerate(grid.axis(2).astype(np.float64)):
        sl = base.copy()
        lung_slice = np.zeros(base.shape, dtype=bool)
        torso.draw(sl, float(z), lung_slice)
        bones.draw(sl, float(z))
        hu[:, :, k] = sl
        lung[:, :, k] = lung_slice
    return hu, lung
