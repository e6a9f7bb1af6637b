"""Synthetic pulmonary nodules: size, type, shape and malignancy sampling, and partial-volume rendering.

* Diameters are log-normal (median 6.5 mm, sigma 0.5 in log space) truncated to 3-30 mm, like LUNA16's
  annotations: most nodules are 4-10 mm. Findings of 1.5-3 mm are drawn too but listed as excluded.
* Types: solid (+20..+60 HU), part-solid (ground-glass halo with a solid core), ground-glass (the domain's
  bands, -780..-240 HU over both domains) and a few calcified benign ones (+250..+700 HU).
* Placements: isolated, juxtapleural, juxtavascular (the domain's share) and perifissural (touching a fissure).
* About a third of the tiny excluded findings are calcified granulomas (+300..+900 HU).
* Shapes are star-shaped: a sphere stretched by a random near-identity ellipsoid and lobulated by a few smooth
  bumps of zero mean, plus thin spicules on the most irregular ones.
* Malignancy imitates an LIDC rating: the mean of four simulated readers (steps of 0.25 in 1..5), rising with size
  and irregularity, higher for part-solid, ~1 for calcified, plus reader noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pivot_monai.data.synthetic.domains import DOMAINS, Domain, draw
from pivot_monai.data.synthetic.raster import RenderGrid, TubeSet, ramp, rasterize_tubes

__all__ = [
    "EXCLUDED_DIAMETER_RANGE",
    "NODULE_COUNT_PROBS",
    "NoduleSpec",
    "malignancy_rating",
    "render_nodule",
    "sample_excluded_diameters",
    "sample_findings",
    "sample_nodule",
    "sample_nodule_diameters",
]

KINDS = ("solid", "part-solid", "ground-glass", "calcified")
KIND_PROBS = (0.68, 0.12, 0.14, 0.06)
PLACEMENTS = ("isolated", "juxtapleural", "juxtavascular", "perifissural")
_JUXTAPLEURAL_SHARE, _PERIFISSURAL_SHARE = 0.25, 0.1
NODULE_COUNT_PROBS = (0.15, 0.33, 0.27, 0.15, 0.10)  # P(0..4 nodules in a scan)
EXCLUDED_DIAMETER_RANGE = (1.5, 3.0)


@dataclass
class NoduleSpec:
    """One synthetic finding (local frame). ``centre`` is set by placement.

    Attributes:
        diameter: nominal diameter (mm), the annotated one.
        kind: one of ``solid``, ``part-solid``, ``ground-glass``, ``calcified``.
        placement: ``isolated``, ``juxtapleural``, ``juxtavascular`` or ``perifissural`` (what placement aims for).
        hu: attenuation of the nodule (of the halo for part-solid).
        core_fraction: solid-core radius / radius (part-solid only, else 0).
        core_hu: attenuation of the solid core.
        shape: (3, 3) linear map applied to offsets before measuring the radius (anisotropy).
        bump_dirs, bump_amps, bump_kappa: lobulation bumps ``a * (exp(kappa (u.q - 1)) - mean)``.
        spicules: (S, 4) rows ``(direction xyz, length mm)``.
        irregularity: 0 (smooth sphere) .. 1 (lobulated, spiculated).
        malignancy: LIDC-like mean rating 1..5, None for excluded findings.
        excluded: listed in ``annotations_excluded.csv`` instead of ``annotations.csv``.
        centre: (3,) local mm, or None before placement.
    """

    diameter: float
    kind: str
    placement: str
    hu: float
    core_fraction: float
    core_hu: float
    shape: np.ndarray
    bump_dirs: np.ndarray
    bump_amps: np.ndarray
    bump_kappa: np.ndarray
    spicules: np.ndarray
    irregularity: float
    malignancy: float | None
    excluded: bool = False
    centre: np.ndarray | None = field(default=None)

    @property
    def radius(self) -> float:
        return 0.5 * self.diameter

    def radius_factor(self, unit: np.ndarray, axis: int = -1) -> np.ndarray:
        """Surface radius / nominal radius in the unit directions ``unit`` (components along ``axis``)."""
        dots = np.tensordot(np.moveaxis(unit, axis, -1), self.bump_dirs.T, axes=1)  # (..., K)
        k = self.bump_kappa
        mean = (1.0 - np.exp(-2.0 * k)) / (2.0 * k)
        return 1.0 + np.sum(self.bump_amps * (np.exp(k * (dots - 1.0)) - mean), axis=-1)

    def surface_and_radius(self, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Surface radius and distance (mm, in the nodule's stretched frame) of offsets from the centre.

        A point is inside the nodule body where ``distance <= surface``; ``surface - distance`` approximates the
        signed distance to the surface.
        """
        offsets = np.broadcast_arrays(dx, dy, dz)
        v = [sum(self.shape[i, j] * offsets[j] for j in range(3)) for i in range(3)]
        r = np.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2)
        unit = np.stack(v, axis=-1) / np.maximum(r, 1e-6)[..., None]
        return self.radius * self.radius_factor(unit), r

    @property
    def extent(self) -> float:
        """Upper bound (mm) of the distance from the centre to any part of the nodule body (no spicules)."""
        stretch = 1.0 / float(np.linalg.svd(self.shape, compute_uv=False).min())
        return self.radius * stretch * (1.0 + float(np.sum(np.clip(self.bump_amps, 0.0, None))))


def sample_nodule_diameters(
    rng: np.random.Generator, n: int, median_mm: float = 6.5, sigma: float = 0.5, low: float = 3.0, high: float = 30.0
) -> np.ndarray:
    """(n,) diameters (mm) from a log-normal truncated to ``[low, high]`` (LUNA16-like: most are 4-10 mm)."""
    if not 0 < low < high:
        raise ValueError(f"diameter range must satisfy 0 < low < high, got low={low}, high={high}")
    out = np.empty(0)
    while len(out) < n:
        draw = np.exp(rng.normal(np.log(median_mm), sigma, 2 * n + 8))
        out = np.concatenate([out, draw[(draw >= low) & (draw <= high)]])
    return out[:n]


def sample_excluded_diameters(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) diameters (mm) of tiny excluded findings, uniform in :data:`EXCLUDED_DIAMETER_RANGE`."""
    return rng.uniform(*EXCLUDED_DIAMETER_RANGE, n)


def malignancy_rating(
    rng: np.random.Generator, diameter: float, irregularity: float, kind: str, readers: int = 4
) -> float:
    """LIDC-like malignancy: the mean of ``readers`` integer ratings 1..5 around a size/shape-driven score."""
    if kind == "calcified":
        score = 1.2
    else:
        logit = 1.7 * np.log(diameter / 9.0) + 2.0 * (irregularity - 0.35) + (0.7 if kind == "part-solid" else 0.0)
        score = 1.0 + 4.0 / (1.0 + np.exp(-(logit + rng.normal(0.0, 0.5))))
    ratings = np.clip(np.round(score + rng.normal(0.0, 0.6, readers)), 1, 5)
    return float(np.mean(ratings))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _placement_probs(domain: Domain) -> tuple[float, ...]:
    jv = domain.juxtavascular_share
    return (1.0 - jv - _JUXTAPLEURAL_SHARE - _PERIFISSURAL_SHARE, _JUXTAPLEURAL_SHARE, jv, _PERIFISSURAL_SHARE)


def sample_nodule(
    rng: np.random.Generator, diameter: float, excluded: bool = False, domain: Domain | None = None
) -> NoduleSpec:
    """Draw type, attenuation, shape, placement and malignancy of one finding of ``diameter`` mm.

    Args:
        rng: the scan's random generator.
        diameter: nominal diameter (mm).
        excluded: a tiny finding for ``annotations_excluded.csv`` (solid, or a calcified granuloma).
        domain: generator domain (ground-glass attenuation, placement shares); None means ``train``.
    """
    domain = DOMAINS["train"] if domain is None else domain
    if excluded:
        kind = "calcified" if rng.random() < 0.35 else "solid"
    else:
        kind = str(rng.choice(KINDS, p=KIND_PROBS))
    placement = "isolated" if excluded else str(rng.choice(PLACEMENTS, p=_placement_probs(domain)))
    irregularity = (
        0.0 if kind == "calcified" else float(np.clip(rng.beta(2.0, 4.0) + 0.15 * np.log(diameter / 8.0), 0.0, 1.0))
    )
    if excluded:
        irregularity *= 0.3
    hu = {
        "solid": lambda: rng.uniform(20.0, 60.0),
        "part-solid": lambda: draw(rng, domain.ggo_hu),
        "ground-glass": lambda: draw(rng, domain.ggo_hu),
        "calcified": lambda: rng.uniform(300.0, 900.0) if excluded else rng.uniform(250.0, 700.0),
    }[kind]()
    core_fraction = rng.uniform(0.3, 0.6) if kind == "part-solid" else 0.0
    rot = _random_rotation(rng)
    stretch = np.exp(rng.normal(0.0, 0.06 + 0.08 * irregularity, 3))
    stretch /= np.prod(stretch) ** (1.0 / 3.0)
    shape = rot @ np.diag(1.0 / stretch) @ rot.T
    n_bumps = int(rng.integers(2, 7))
    dirs = rng.standard_normal((n_bumps, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    amps = (0.05 + 0.35 * irregularity) * rng.uniform(-0.4, 1.0, n_bumps)
    kappa = rng.uniform(3.0, 10.0, n_bumps)
    spicules = np.zeros((0, 4))
    if kind in ("solid", "part-solid") and irregularity > 0.5 and diameter >= 6.0:
        n_sp = int(rng.integers(3, 9))
        sp_dirs = rng.standard_normal((n_sp, 3))
        sp_dirs /= np.linalg.norm(sp_dirs, axis=1, keepdims=True)
        spicules = np.column_stack([sp_dirs, rng.uniform(0.3, 0.9, n_sp) * 0.5 * diameter])
    malignancy = None if excluded else malignancy_rating(rng, diameter, irregularity, kind)
    return NoduleSpec(
        diameter=float(diameter),
        kind=kind,
        placement=placement,
        hu=float(hu),
        core_fraction=float(core_fraction),
        core_hu=float(rng.uniform(10.0, 50.0)),
        shape=shape,
        bump_dirs=dirs,
        bump_amps=amps,
        bump_kappa=kappa,
        spicules=spicules,
        irregularity=irregularity,
        malignancy=malignancy,
        excluded=excluded,
    )


def sample_findings(rng: np.random.Generator, domain: Domain | None = None) -> list[NoduleSpec]:
    """All findings of one scan: 0-4 nodules (:data:`NODULE_COUNT_PROBS`) and 0-3 tiny excluded ones.

    Args:
        rng: the scan's random generator.
        domain: generator domain (nodule size median, attenuation, placement); None means ``train``.
    """
    domain = DOMAINS["train"] if domain is None else domain
    n = int(rng.choice(len(NODULE_COUNT_PROBS), p=NODULE_COUNT_PROBS))
    n_excluded = int(min(rng.poisson(0.8), 3))
    diameters = sample_nodule_diameters(rng, n, median_mm=domain.nodule_median_mm)
    specs = [sample_nodule(rng, d, domain=domain) for d in diameters]
    specs += [sample_nodule(rng, d, excluded=True, domain=domain) for d in sample_excluded_diameters(rng, n_excluded)]
    return specs


def render_nodule(hu: np.ndarray, grid: RenderGrid, spec: NoduleSpec) -> None:
    """Draw a placed nodule into ``hu`` (X, Y, Z float32, in place), keeping brighter structures (vessels) visible.

    Raises:
        ValueError: the nodule has not been placed (``spec.centre`` is None).
    """
    if spec.centre is None:
        raise ValueError("render_nodule needs a placed nodule (spec.centre is None); run placement first")
    c, h = spec.centre, grid.h
    reach = spec.extent + h
    box = grid.box(c - reach, c + reach)
    if box is not None:
        x, y, z = grid.box_coords(box)
        surface, r = spec.surface_and_radius(x - c[0], y - c[1], z - c[2])
        fuzzy = spec.kind in ("ground-glass", "part-solid")
        occ = ramp(surface - r, h + (1.2 if fuzzy else 0.0)) * min(1.0, spec.diameter / h)
        region = hu[box]
        layers = [(occ.mean(axis=3, dtype=np.float32), spec.hu)]
        if spec.core_fraction > 0:
            core = ramp(spec.core_fraction * surface - r, h).mean(axis=3, dtype=np.float32)
            layers.append((core, spec.core_hu))
        for layer, value in layers:
            np.maximum(region, region + layer * (value - region), out=region)
    if len(spec.spicules):
        dirs, lengths = spec.spicules[:, :3], spec.spicules[:, 3]
        base = spec.radius * spec.radius_factor(dirs)[:, None] * 0.9
        a = c + dirs * base
        b = c + dirs * (base + lengths[:, None])
        value = spec.core_hu if spec.kind == "part-solid" else spec.hu
        spikes = TubeSet(a, b, np.full(len(a), 0.08 * spec.diameter), np.full(len(a), 0.25), np.full(len(a), value))
        rasterize_tubes(hu, grid, spikes, mode="max")
