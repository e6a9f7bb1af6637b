"""A parametric adult chest in a patient-local frame, sampled per synthetic scan.

Frame: LPS axes in mm (x towards the patient's left, y posterior, z superior), body centre at ``x = y = 0`` and
``z = 0`` at the lowest point of the lungs (posterior costophrenic recess). The dataset module shifts this frame to
scanner world coordinates; :mod:`~pivot_monai.data.synthetic.chest_sampling` draws the parameters.

The lungs are defined implicitly: each lung is the intersection of a few regions (thoracic cavity, an apical
envelope, above its diaphragm dome) minus mediastinal structures (band, heart, spine, aorta, SVC, pulmonary
arteries, trachea, oesophagus). :meth:`ChestModel.lung_terms` yields one approximate signed distance (mm) per
region, so the same code gives a point-wise distance for vessel growth and nodule placement
(:meth:`ChestModel.lung_sd`) and a partial-volume occupancy for rendering (:meth:`ChestModel.lung_occupancy`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pivot_monai.data.synthetic.raster import capsule_distance, edge_width, egg_sd, ellipse_sd, ellipsoid_sd, ramp

__all__ = ["SIDES", "Capsule", "ChestModel", "Fissure", "Tissue", "band_profile"]

SIDES = (-1.0, 1.0)  # index 0: right lung (negative x in LPS), index 1: left lung


@dataclass(frozen=True)
class Tissue:
    """Per-patient Hounsfield values of the tissues drawn."""

    fat: float
    mediastinal_fat: float
    muscle: float
    blood: float
    liver: float
    spleen: float
    stomach: float
    lung: float
    lung_gradient: float
    lung_texture_std: float
    cortex: float
    marrow: float
    cartilage: float
    disc: float
    table: float


@dataclass(frozen=True)
class Capsule:
    """A mediastinal tube (aorta, SVC, trachea, ...) that the lungs keep ``pad`` mm away from."""

    name: str
    a: np.ndarray
    b: np.ndarray
    r: float
    pad: float = 2.0


@dataclass(frozen=True)
class Fissure:
    """One interlobar fissure of a lung, a gently curved surface through the lung (local frame, mm).

    The oblique (major) fissure rises from ``z_ant`` at the anterior diaphragm to ``z_post`` at the back of the
    lung, bowed by ``curve`` mm towards the lateral wall; the right lung's horizontal (minor) fissure lies at
    ``z_h`` in front of the oblique one. ``gap`` is the medial fraction (towards the hilum) where the fissure is
    incomplete, as it often is.

    Attributes:
        side: 0 right lung, 1 left lung.
        z_ant, z_post: oblique fissure height at the front and at the back of the lung.
        curve: lateral bowing of the oblique fissure (mm).
        z_h: horizontal fissure height (right lung), or None.
        gap: medial fraction of the fissure that is missing (0 complete).
        visibility: tissue fraction of the fissure line (0 invisible .. 1 a full 0.5 mm pleural double layer).
    """

    side: int
    z_ant: float
    z_post: float
    curve: float
    z_h: float | None
    gap: float
    visibility: float


@dataclass(frozen=True)
class ChestModel:
    """Shape parameters of one synthetic chest (mm and radians, patient-local frame; see the module docstring).

    Attributes (by group):
        body wall: thoracic cavity semi-axes ``cav_a`` (left-right), ``cav_b`` / ``cav_b_post`` (anterior /
            posterior) and its narrowing ``cav_taper`` towards the apex; subcutaneous ``fat_t``, ``muscle_t``,
            rib layer ``rib_zone``; body outline ``body_a``, ``body_b_ant``, ``body_b_post`` with superellipse
            exponents ``body_p`` (anterior, posterior).
        lungs: ``lung_height`` (base at z = 0), apical taper from ``z_taper``; apical envelope centred at
            ``(+-env_x, env_y)`` with semi-axes ``env_a``, ``env_b``; diaphragm domes (right, left) peaking at
            ``dome_top`` over ``(+-dome_x, dome_y)`` with radii ``dome_rx``, ``dome_ry`` and an anterior floor
            ``dome_floor_ant``.
        mediastinum: midline ``mx``; band half-widths ``band_w`` (right, left), widest at depth ``band_y`` and by
            ``hilum_bulge`` at ``hilum_z``; ``carina_z``, ``arch_z``; heart ellipsoid ``heart_c``, ``heart_r``
            turned by ``heart_angle`` in-plane and ``heart_tilt`` towards the apex; great vessels and airways as
            ``capsules``; arterial ``hilum`` and ``vein_hilum`` points per side; ``left_atrium``;
            ``trachea_wall`` thickness.
        skeleton: vertebral body at ``(mx, spine_y)`` with semi-axes ``vb_a``, ``vb_b``; spinal ``canal_r``;
            ``spinous_len``; disc height ``disc_h``; 12 ribs every ``rib_pitch`` from ``rib_z1`` (posterior end),
            dropping ``rib_drop`` towards the front, cross-section ``rib_t`` x ``rib_h``; sternum between
            ``sternum_z`` with half-width ``sternum_w``; scapulae between ``scapula_z``.
        other: CT table top ``table_y`` with curvature radius ``table_r``; ``gastric_bubble``; ``tissue`` HU.
        shape: lateral convexity ``cav_bulge`` of the thoracic cavity (widest at mid-height) and its
            antero-posterior narrowing ``ap_taper`` towards the apex; interlobar ``fissures``.
    """

    # body wall: thoracic cavity ellipse, layers outside it
    cav_a: float
    cav_b: float
    cav_b_post: float
    cav_taper: float
    fat_t: float
    muscle_t: float
    rib_zone: float
    body_a: float
    body_b_ant: float
    body_b_post: float
    body_p: tuple[float, float]
    # lungs: height, apical envelope per side (centre at +-env_x, env_y), diaphragm domes
    lung_height: float
    z_taper: float
    env_x: float
    env_y: float
    env_a: float
    env_b: float
    dome_top: tuple[float, float]
    dome_x: float
    dome_y: float
    dome_rx: float
    dome_ry: float
    dome_floor_ant: float
    # mediastinum
    mx: float
    band_w: tuple[float, float]
    band_y: float
    hilum_bulge: float
    hilum_z: float
    carina_z: float
    arch_z: float
    heart_c: np.ndarray
    heart_r: np.ndarray
    heart_angle: float
    heart_tilt: float
    capsules: tuple[Capsule, ...]
    hilum: tuple[np.ndarray, np.ndarray]
    vein_hilum: tuple[np.ndarray, np.ndarray]
    left_atrium: np.ndarray
    trachea_wall: float
    # skeleton
    spine_y: float
    vb_a: float
    vb_b: float
    canal_r: float
    spinous_len: float
    disc_h: float
    rib_pitch: float
    rib_z1: float
    rib_drop: float
    rib_t: float
    rib_h: float
    sternum_z: tuple[float, float]
    sternum_w: float
    scapula_z: tuple[float, float]
    table_y: float
    table_r: float
    gastric_bubble: bool
    tissue: Tissue
    cav_bulge: float = 0.0
    ap_taper: float = 0.06
    fissures: tuple[Fissure, ...] = ()

    # ------------------------------------------------------------------ named parts
    def capsule(self, name: str) -> Capsule:
        """The mediastinal capsule called ``name`` (first match)."""
        for c in self.capsules:
            if c.name == name:
                return c
        raise ValueError(f"no mediastinal capsule named {name!r}; have {[c.name for c in self.capsules]}")

    def cavity_scale(self, z: np.ndarray | float) -> tuple[np.ndarray | float, np.ndarray | float]:
        """In-plane scale of the thoracic cavity at height ``z``: barrel-shaped, narrowing towards the apex."""
        t = np.clip(z / self.lung_height, 0.0, 1.0)
        return 1.0 - self.cav_taper * t**1.3 + 4.0 * self.cav_bulge * t * (1.0 - t), 1.0 - self.ap_taper * t**1.8

    def cavity_sd(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | float) -> np.ndarray:
        """In-plane signed distance (positive inside, approximate) to the thoracic cavity at height ``z``."""
        sa, sb = self.cavity_scale(z)
        return egg_sd(x / sa, y / sb, self.cav_a, self.cav_b, self.cav_b_post) * np.minimum(sa, sb)

    def band_halfwidth(
        self, z: np.ndarray | float, side: int, y: np.ndarray | float | None = None
    ) -> np.ndarray | float:
        """Half-width (mm) of the mediastinal band on ``side`` (0 right, 1 left) at height ``z`` and depth ``y``.

        The band is widest at the depth of the trachea and narrows anteriorly (retrosternal) and posteriorly.
        """
        w = band_profile(z, self.band_w[side], self.hilum_bulge, self.hilum_z, self.arch_z)
        if y is None:
            return w
        return w * (0.75 + 0.25 * np.exp(-(((y - self.band_y) / (0.5 * self.cav_b)) ** 2)))

    def spine_sd(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """In-plane signed distance (positive inside) to the vertebra: body plus the ring around the spinal canal."""
        canal_y = self.spine_y + self.vb_b + self.canal_r + 1.0
        ring = self.canal_r + 5.0 - np.hypot(x - self.mx, y - canal_y)
        return np.maximum(self.vertebral_body_sd(x, y), ring)

    def dome_z(self, x: np.ndarray, y: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
        """Height of the diaphragm dome on ``side`` below ``(x, y)`` and the z-component of its normal."""
        s = SIDES[side]
        floor = self.dome_floor_ant * np.clip((self.cav_b_post - y) / (self.cav_b + self.cav_b_post), 0.0, 1.0)
        depth = self.dome_top[side] - floor
        ux = (x - s * self.dome_x) / self.dome_rx
        uy = (y - self.dome_y) / self.dome_ry
        q2 = ux * ux + uy * uy
        inside = q2 < 1.0
        zd = self.dome_top[side] - depth * np.minimum(q2, 1.0)
        grad = 2.0 * depth * np.sqrt((ux / self.dome_rx) ** 2 + (uy / self.dome_ry) ** 2) * inside
        return zd, 1.0 / np.sqrt(1.0 + grad * grad)

    def diaphragm_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Diaphragm height blending the right and left domes smoothly across the midline."""
        w_right = 1.0 / (1.0 + np.exp((x - self.mx) / 10.0))
        return w_right * self.dome_z(x, y, 0)[0] + (1.0 - w_right) * self.dome_z(x, y, 1)[0]

    def heart_sd(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Signed distance (positive inside) to the heart ellipsoid and its normal's |z| (approximate).

        The long axis points left-anterior (in-plane ``heart_angle``) and down (``heart_tilt``) towards the apex.
        """
        c, s = np.cos(self.heart_angle), np.sin(self.heart_angle)
        dx, dy, dz = x - self.heart_c[0], y - self.heart_c[1], z - self.heart_c[2]
        u, v = c * dx + s * dy, -s * dx + c * dy
        ct, st = np.cos(self.heart_tilt), np.sin(self.heart_tilt)
        return ellipsoid_sd(ct * u - st * dz, v, st * u + ct * dz, *self.heart_r)

    def vertebral_body_sd(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """In-plane signed distance (positive inside) to the vertebral body."""
        return ellipse_sd(x - self.mx, y - self.spine_y, self.vb_a, self.vb_b)

    # ------------------------------------------------------------------ lungs
    def apex_sd(self, dx: np.ndarray, dy: np.ndarray, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Signed distance to a lung's apical envelope (offsets from its axis) and the normal's |z|.

        Below ``z_taper`` the envelope is an elliptic cylinder; above, its cross-section scales by
        ``f(w) = (1 - w^1.5)^0.8`` (``w`` the fraction of the apical height): smooth where the taper starts and a
        fairly narrow dome at ``z = lung_height``.
        """
        c = self.lung_height - self.z_taper
        w = np.clip((z - self.z_taper) / c, 0.0, 1.0)
        base = np.maximum(1.0 - w**1.5, 1e-4)
        f = base**0.8
        sd = ellipse_sd(dx / f, dy / f, self.env_a, self.env_b) * f
        slope = min(self.env_a, self.env_b) / c * 1.2 * np.sqrt(w) * base**-0.2  # |dr/dz| of the surface
        return sd, slope / np.sqrt(1.0 + slope * slope)

    def lung_terms(
        self, x: np.ndarray, y: np.ndarray, z: np.ndarray | float, side: int | None
    ) -> Iterator[tuple[np.ndarray | float, np.ndarray | float]]:
        """Signed distances (mm, positive inside the lung) of the regions bounding the lung on ``side``.

        Yields ``(sd, nz)`` pairs, ``nz`` being the z-component of the region boundary's normal; the lung is where
        all ``sd > 0``. ``side=None`` yields only the terms shared by both lungs (cavity, spine, heart, mediastinal
        capsules), ``0``/``1`` only that lung's own terms (apical envelope, mediastinal band, diaphragm dome). With
        a scalar ``z`` (one slice), structures that cannot reach the slice are skipped.
        """
        if side is None:
            yield self.cavity_sd(x, y, z), 0.0
            yield -self.spine_sd(x, y) - 3.0, 0.0
            if np.ndim(z) > 0 or abs(z - self.heart_c[2]) < self.heart_r[2] + 5.0:
                sd, nz = self.heart_sd(x, y, z)
                yield -sd - 2.0, nz
            if np.ndim(z) > 0:  # points: all capsules at once
                yield _capsules_sd(x, y, z, self.capsules), 0.0
                return
            for c in self.capsules:  # one slice: only capsules reaching it
                if min(c.a[2], c.b[2]) - c.r - 10.0 < z < max(c.a[2], c.b[2]) + c.r + 10.0:
                    dist, _, nz = capsule_distance(x, y, z, c.a, c.b)
                    yield dist - c.r - c.pad, nz
            return
        s = SIDES[side]
        sa, _ = self.cavity_scale(z)
        yield self.apex_sd(x / sa - s * self.env_x, y - self.env_y, z)
        yield s * (x - self.mx) - self.band_halfwidth(z, side, y), 0.0
        zd, nz = self.dome_z(x, y, side)
        yield (z - zd) * nz - 2.0, nz

    def lung_sd(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Approximate signed distance (mm, positive inside) of local points ``(N, 3)`` to the nearest lung.

        Returns:
            ``(sd, side)``: (N,) distances and (N,) side index of the closer lung (0 right, 1 left).
        """
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        shared = np.full(len(p), np.inf)
        for term, _ in self.lung_terms(x, y, z, None):
            shared = np.minimum(shared, term)
        per_side = []
        for side in (0, 1):
            sd = shared
            for term, _ in self.lung_terms(x, y, z, side):
                sd = np.minimum(sd, term)
            per_side.append(sd)
        both = np.stack(per_side)
        return both.max(axis=0), both.argmax(axis=0)

    def lung_occupancy(
        self, x: np.ndarray, y: np.ndarray, z: float, h: float, thickness: float, sides: tuple[int, ...] = (0, 1)
    ) -> np.ndarray:
        """Partial-volume lung occupancy in [0, 1] on an axial slice (x, y broadcastable arrays, scalar z).

        Args:
            x, y: broadcastable in-plane coordinates (mm).
            z: slice height (mm).
            h: in-plane voxel size (mm), the ramp width of in-plane edges.
            thickness: slice thickness (mm), the ramp width of edges facing z.
            sides: lungs to include (0 right, 1 left).
        """
        shared = None
        for sd, nz in self.lung_terms(x, y, z, None):
            term = ramp(sd, edge_width(h, thickness, nz))
            shared = term if shared is None else np.minimum(shared, term)
        occ = None
        for side in sides:
            side_occ = shared
            for sd, nz in self.lung_terms(x, y, z, side):
                side_occ = np.minimum(side_occ, ramp(sd, edge_width(h, thickness, nz)))
            occ = side_occ if occ is None else np.maximum(occ, side_occ)
        return np.broadcast_to(occ, np.broadcast_shapes(np.shape(x), np.shape(y))).astype(np.float32)

    # ------------------------------------------------------------------ fissures
    def fissure_surfaces(self, x: np.ndarray, y: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, float, float]]:
        """Yields ``(height, valid, norm, visibility)`` per fissure surface, which does not depend on z.

        ``height`` is the surface's z (mm) above each ``(x, y)``; a point's signed distance to it is about
        ``(z - height) / norm`` (``norm`` is ``sqrt(1 + slope^2)``, 1 for the horizontal fissure). ``valid`` marks
        where the surface exists (on its lung's side, outside its medial gap; the horizontal fissure only in front
        of the oblique one); ``visibility`` is the fissure's (see :class:`Fissure`). Arrays broadcast like ``x``
        and ``y``.
        """
        y_a, y_p = -self.cav_b, self.cav_b_post
        for fis in self.fissures:
            s = SIDES[fis.side]
            lateral = np.clip(s * (x - self.mx) / self.cav_a, 0.0, 1.0)
            slope = (fis.z_post - fis.z_ant) / (y_p - y_a)
            z_obl = fis.z_ant + slope * (y - y_a) + fis.curve * (1.0 - (2.0 * lateral - 1.0) ** 2)
            valid = (s * (x - self.mx) > 0) & (lateral > fis.gap)
            yield z_obl, valid, float(np.sqrt(1.0 + slope * slope)), fis.visibility
            if fis.z_h is not None:
                yield (
                    np.full(np.broadcast_shapes(np.shape(x), np.shape(y)), float(fis.z_h)),
                    valid & (fis.z_h > z_obl),
                    1.0,
                    fis.visibility,
                )

    def fissure_distances(
        self, x: np.ndarray, y: np.ndarray, z: np.ndarray | float
    ) -> Iterator[tuple[np.ndarray, np.ndarray, float, float]]:
        """Yields ``(distance, valid, nz, visibility)`` per fissure surface.

        ``distance`` (mm, approximate) is the points' signed distance to the surface, ``nz`` the z-component of
        its normal; ``valid`` and ``visibility`` are :meth:`fissure_surfaces`'. Arrays broadcast like ``x``, ``y``,
        ``z``.
        """
        for height, valid, norm, visibility in self.fissure_surfaces(x, y):
            yield (z - height) / norm, valid, 1.0 / norm, visibility

    def fissure_distance(self, points: np.ndarray) -> np.ndarray:
        """(N,) unsigned distance (mm) of local points ``(N, 3)`` to the nearest fissure (inf without fissures)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        out = np.full(len(p), np.inf)
        for d, valid, _, _ in self.fissure_distances(p[:, 0], p[:, 1], p[:, 2]):
            out = np.where(valid, np.minimum(out, np.abs(d)), out)
        return out


def _capsules_sd(x: np.ndarray, y: np.ndarray, z: np.ndarray, caps: tuple[Capsule, ...]) -> np.ndarray:
    """(N,) distance (mm) of points beyond the padded surface of the nearest capsule, all capsules at once."""
    a = np.array([c.a for c in caps])
    ab = np.array([c.b for c in caps]) - a
    reach = np.array([c.r + c.pad for c in caps])
    length2 = np.maximum(np.sum(ab * ab, axis=1), 1e-12)
    px, py, pz = x[:, None] - a[:, 0], y[:, None] - a[:, 1], z[:, None] - a[:, 2]
    t = np.clip((px * ab[:, 0] + py * ab[:, 1] + pz * ab[:, 2]) / length2, 0.0, 1.0)
    dist = np.sqrt((px - t * ab[:, 0]) ** 2 + (py - t * ab[:, 1]) ** 2 + (pz - t * ab[:, 2]) ** 2)
    return (dist - reach).min(axis=1)


def band_profile(z: np.ndarray | float, base: float, bulge: float, hilum_z: float, arch_z: float) -> np.ndarray | float:
    """Mediastinal half-width at height ``z``: ``base``, wider at the hila, narrower above the aortic arch."""
    hilar = bulge * np.exp(-(((z - hilum_z) / 30.0) ** 2))
    upper = 1.0 - 0.25 / (1.0 + np.exp(-(z - arch_z - 15.0) / 8.0))
    return (base + hilar) * upper
