"""Draw the parameters of one adult chest (:class:`~pivot_monai.data.synthetic.chest_model.ChestModel`).

Ranges are chosen for adults in supine chest CT: thoracic cavity 235-290 mm wide and 155-200 mm deep, lungs
235-300 mm tall from the costophrenic recess to the apex, right dome 5-20 mm higher than the left, heart resting on
the left dome, aortic arch 20-32 mm above the carina, 12 ribs dropping 75-105 mm from back to front, and tissue
attenuations varying by a few tens of HU between patients.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pivot_monai.data.synthetic.chest_model import SIDES, Capsule, ChestModel, Fissure, Tissue, band_profile
from pivot_monai.data.synthetic.domains import DOMAINS, Domain, draw

__all__ = ["sample_chest_model"]


def _tissue(rng: np.random.Generator, domain: Domain) -> Tissue:
    u = rng.uniform
    fat = u(-112.0, -85.0)
    return Tissue(
        fat=fat,
        mediastinal_fat=fat + u(0.0, 20.0),
        muscle=u(38.0, 55.0),
        blood=u(32.0, 48.0),
        liver=u(50.0, 66.0),
        spleen=u(40.0, 52.0),
        stomach=u(10.0, 30.0),
        lung=draw(rng, domain.lung_hu),
        lung_gradient=u(15.0, 45.0),
        lung_texture_std=u(11.0, 17.0),
        cortex=u(650.0, 950.0),
        marrow=u(140.0, 280.0),
        cartilage=u(80.0, 160.0),
        disc=u(70.0, 100.0),
        table=u(150.0, 300.0),
    )


def _fissures(rng: np.random.Generator, height: float) -> tuple[Fissure, ...]:
    """Oblique fissures in both lungs (rising 45-60 degrees to the back) and the right lung's horizontal one."""
    u = rng.uniform
    out = []
    for side in (0, 1):
        z_h = height * u(0.5, 0.62) if side == 0 else None
        gap = u(0.0, 0.35) if rng.random() < 0.6 else 0.0
        out.append(Fissure(side, height * u(0.0, 0.12), height * u(0.62, 0.8), u(-8.0, 8.0), z_h, gap, u(0.3, 1.0)))
    return tuple(out)


def _mediastinum(
    u: Callable[[float, float], float],
    *,
    mx: float,
    cav_b: float,
    vb_a: float,
    vb_b: float,
    spine_y: float,
    height: float,
    heart_c: np.ndarray,
    heart_r: np.ndarray,
    hilum_z: float,
    arch_z: float,
    carina_z: float,
    band_w: tuple[float, float],
    hilum_bulge: float,
) -> tuple[tuple[Capsule, ...], list[np.ndarray], tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
    """Great vessels and central airways as capsules, the hila and the left atrium.

    Returns:
        ``(capsules, arterial hila, venous hila, left atrium, trachea (x, y))``.
    """
    heart_top = heart_c[2] + heart_r[2]
    top = height + 120.0
    r_asc, r_desc = u(13.0, 16.0), u(10.0, 12.5)
    asc = np.array([mx - u(2.0, 8.0), -cav_b * u(0.15, 0.28)])
    phi, dist = np.deg2rad(u(40.0, 60.0)), max(vb_a, vb_b) + r_desc + u(3.0, 6.0)
    desc = np.array([mx + dist * np.sin(phi), spine_y - dist * np.cos(phi)])
    r_eso = u(6.0, 8.0)
    eso = np.array([mx + u(-4.0, 2.0), spine_y - vb_b - r_eso - u(2.0, 4.0)])
    r_tr = u(8.0, 10.5)
    trachea = np.array([mx + u(-3.0, 3.0), eso[1] - r_eso - r_tr - u(1.0, 3.0)])
    arch_mid = np.array([trachea[0] + r_tr + r_desc + u(2.0, 5.0), trachea[1] - u(4.0, 10.0), arch_z + u(4.0, 10.0)])
    r_svc = u(8.0, 10.0)
    svc = np.array([asc[0] - r_asc - r_svc - u(0.5, 2.0), asc[1] + u(0.0, 8.0)])
    r_pa = u(12.0, 15.0)

    hilum_y = u(-2.0, 10.0)
    hila = []
    for side, s in enumerate(SIDES):
        zh = hilum_z + (6.0 if s > 0 else 0.0)
        w = band_profile(zh, band_w[side], hilum_bulge, hilum_z, arch_z)
        hila.append(np.array([mx + s * (w - 2.0), hilum_y, zh]))
    vein_hila = tuple(np.array([h[0], h[1] - u(12.0, 20.0), h[2] - u(22.0, 32.0)]) for h in hila)
    pa_root = np.array([mx + u(8.0, 14.0), heart_c[1] - 0.4 * heart_r[1], heart_top - 0.25 * heart_r[2]])
    pa_bif = np.array([mx + u(2.0, 8.0), asc[1] + r_asc + u(6.0, 12.0), hilum_z + u(8.0, 14.0)])
    left_atrium = np.array([mx + u(0.0, 8.0), heart_c[1] + 0.55 * heart_r[1], heart_c[2] + 0.45 * heart_r[2]])

    def cap(name: str, a: tuple, b: tuple, r: float, pad: float = 2.0) -> Capsule:
        return Capsule(name, np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), r, pad)

    capsules = (
        cap("aorta_ascending", (*asc, heart_top - 0.5 * heart_r[2]), (*asc, arch_z), r_asc),
        cap("aorta_arch", (*asc, arch_z), arch_mid, 0.5 * (r_asc + r_desc)),
        cap("aorta_arch", arch_mid, (*desc, arch_z), r_desc),
        cap("aorta_descending", (*desc, arch_z), (*desc, -80.0), r_desc),
        cap("svc", (*svc, top), (*svc, heart_c[2] + 0.5 * heart_r[2]), r_svc),
        cap("pulmonary_trunk", pa_root, pa_bif, r_pa),
        cap("pulmonary_artery_right", pa_bif, hila[0], 0.65 * r_pa, 1.5),
        cap("pulmonary_artery_left", pa_bif, hila[1], 0.62 * r_pa, 1.5),
        cap(
            "brachiocephalic_artery",
            (asc[0] + 4.0, asc[1] + 4.0, arch_z + 5.0),
            (trachea[0] - r_tr - u(3.0, 6.0), trachea[1] - u(6.0, 12.0), top),
            u(5.0, 7.0),
        ),
        cap(
            "left_carotid",
            (*arch_mid[:2], arch_z + 5.0),
            (trachea[0] + r_tr - 2.0, trachea[1] - u(8.0, 12.0), top),
            u(3.5, 4.5),
        ),
        cap(
            "left_subclavian",
            (arch_mid[0] + 4.0, arch_mid[1] + 6.0, arch_z + 5.0),
            (arch_mid[0] + u(6.0, 12.0), arch_mid[1] + u(4.0, 10.0), top),
            u(4.0, 5.5),
        ),
        cap("trachea", (*trachea, top), (*trachea, carina_z), r_tr, 2.5),
        cap("oesophagus", (*eso, top), (*eso, -80.0), r_eso),
    )
    return capsules, hila, vein_hila, left_atrium, trachea


def sample_chest_model(rng: np.random.Generator, domain: Domain | None = None) -> ChestModel:
    """Draw one adult chest: body habitus, lung size, mediastinum and skeleton vary within adult ranges.

    Args:
        rng: the scan's random generator.
        domain: generator domain for the patient-dependent ranges (body fat, lung attenuation); None means
            ``train``.

    Returns:
        A :class:`ChestModel` in the patient-local frame (body width about 270-370 mm, lungs 225-290 mm tall).
    """
    domain = DOMAINS["train"] if domain is None else domain
    u = rng.uniform
    cav_a, cav_b = u(118.0, 145.0), u(72.0, 92.0)
    cav_b_post = cav_b * u(1.1, 1.25)
    fat_t, muscle_t, rib_zone = draw(rng, domain.fat_mm), u(7.0, 12.0), u(10.0, 13.0)
    vb_b = u(13.0, 17.0)
    vb_a, canal_r, spinous_len = vb_b * u(1.05, 1.2), u(7.0, 9.0), u(25.0, 35.0)
    spine_y = cav_b_post - vb_b - u(8.0, 14.0)
    wall = rib_zone + muscle_t + fat_t
    body_b_post = max(cav_b_post + wall + u(10.0, 25.0), spine_y + vb_b + 2 * canal_r + spinous_len + 8.0 + fat_t)
    height = u(235.0, 300.0)
    dome_r = height * u(0.2, 0.3)
    dome_top = (dome_r, dome_r - u(5.0, 20.0))
    mx = u(-6.0, 6.0)
    carina_z = height * u(0.6, 0.68)
    hilum_z = carina_z - u(15.0, 25.0)
    arch_z = carina_z + u(20.0, 32.0)
    band_w = (u(20.0, 28.0), u(20.0, 28.0))
    hilum_bulge = u(8.0, 14.0)

    heart_r = np.array([u(55.0, 68.0), u(42.0, 52.0), u(48.0, 58.0)])
    heart_c = np.array([mx + u(14.0, 26.0), -cav_b * u(0.1, 0.2), dome_top[1] - u(15.0, 25.0) + heart_r[2]])
    heart_angle, heart_tilt = np.deg2rad(u(25.0, 45.0)), np.deg2rad(u(15.0, 35.0))
    capsules, hila, vein_hila, left_atrium, trachea = _mediastinum(
        u,
        mx=mx,
        cav_b=cav_b,
        vb_a=vb_a,
        vb_b=vb_b,
        spine_y=spine_y,
        height=height,
        heart_c=heart_c,
        heart_r=heart_r,
        hilum_z=hilum_z,
        arch_z=arch_z,
        carina_z=carina_z,
        band_w=band_w,
        hilum_bulge=hilum_bulge,
    )
    rib_z1 = height + u(0.0, 15.0)
    sternum_z = (dome_top[0] + u(-10.0, 10.0), carina_z + u(45.0, 70.0))
    return ChestModel(
        cav_a=cav_a,
        cav_b=cav_b,
        cav_b_post=cav_b_post,
        cav_taper=u(0.15, 0.26),
        fat_t=fat_t,
        muscle_t=muscle_t,
        rib_zone=rib_zone,
        body_a=cav_a + wall,
        body_b_ant=cav_b + wall + u(0.0, 8.0),
        body_b_post=body_b_post,
        body_p=(u(2.0, 2.3), u(2.3, 2.8)),
        lung_height=height,
        z_taper=height - u(75.0, 100.0),
        env_x=0.5 * cav_a + 4.0,
        env_y=0.5 * (cav_b_post - cav_b) + u(4.0, 12.0),
        env_a=0.62 * cav_a,
        env_b=0.55 * (cav_b + cav_b_post),
        dome_top=dome_top,
        dome_x=0.5 * cav_a,
        dome_y=-0.15 * cav_b,
        dome_rx=0.58 * cav_a,
        dome_ry=0.55 * (cav_b + cav_b_post),
        dome_floor_ant=u(15.0, 35.0),
        mx=mx,
        band_w=band_w,
        band_y=trachea[1],
        hilum_bulge=hilum_bulge,
        hilum_z=hilum_z,
        carina_z=carina_z,
        arch_z=arch_z,
        heart_c=heart_c,
        heart_r=heart_r,
        heart_angle=heart_angle,
        heart_tilt=heart_tilt,
        capsules=capsules,
        hilum=(hila[0], hila[1]),
        vein_hilum=(vein_hila[0], vein_hila[1]),
        left_atrium=left_atrium,
        trachea_wall=u(1.5, 2.5),
        spine_y=spine_y,
        vb_a=vb_a,
        vb_b=vb_b,
        canal_r=canal_r,
        spinous_len=spinous_len,
        disc_h=u(4.0, 7.0),
        rib_pitch=(rib_z1 + u(25.0, 45.0)) / 11.0,
        rib_z1=rib_z1,
        rib_drop=u(75.0, 105.0),
        rib_t=u(5.5, 8.0),
        rib_h=u(8.0, 12.0),
        sternum_z=sternum_z,
        sternum_w=u(12.0, 16.0),
        scapula_z=(height - u(120.0, 150.0), height + 40.0),
        table_y=body_b_post + u(0.0, 3.0),
        table_r=u(500.0, 900.0),
        gastric_bubble=bool(rng.random() < 0.45),
        tissue=_tissue(rng, domain),
        cav_bulge=u(0.02, 0.07),
        ap_taper=u(0.08, 0.22),
        fissures=_fissures(rng, height),
    )
