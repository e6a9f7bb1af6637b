"""Scanner side of the synthetic CT: acquisition presets, field of view, orientation, blur, noise, quantisation.

Presets (see :data:`PRESETS`):

* ``small``: 128-160 px in-plane at ~2.0-2.6 mm (the field of view still covers the chest), 110-200 slices at
  1.5-2.5 mm (LUNA16 keeps only scans with slices of at most 2.5 mm: at 3-4 mm a 4 mm nodule is one partial-volume
  voxel and cannot be told from a vessel); under a second per scan, for tests and quick demos.
* ``fullsize``: 512 x 512 in-plane, spacing = field of view / 512 with the field of view fitted to the body
  (0.6-1.0 mm, inside LIDC's range), slices of 1.25-2.5 mm (occasionally 1 mm, sometimes reconstructed thicker than
  their spacing), 110-300 slices covering the lungs plus margins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pivot_monai.data.geometry import Geometry
from pivot_monai.data.synthetic.chest_model import ChestModel
from pivot_monai.data.synthetic.raster import RenderGrid
from pivot_monai.data.synthetic.vessels import TreeParams

__all__ = [
    "GENERATOR_VERSION",
    "PRESETS",
    "ScanPreset",
    "apply_scanner",
    "orient",
    "sample_grid",
    "signed_permutation",
    "to_canonical",
]

HU_MIN, HU_MAX = -1024.0, 3071.0
GENERATOR_VERSION = 2
"""Bumped when the same seed renders different scans (2: ``small`` slices 1.5-2.5 mm instead of 2.5-4 mm)."""


@dataclass(frozen=True)
class ScanPreset:
    """Acquisition ranges of one ``size`` preset.

    Attributes:
        name: preset name.
        matrix: (min, max) in-plane matrix size; equal values fix it.
        inplane_spacing: (min, max) in-plane spacing (mm).
        fov_margin: (min, max) field of view as a multiple of the body width.
        slice_spacings: candidate slice spacings (mm) with ``slice_weights``; empty means "continuous" in
            ``slice_range``.
        slice_weights: probabilities of ``slice_spacings``.
        slice_range: (min, max) slice spacing (mm) for the continuous case.
        slices: (min, max) number of slices.
        thick_recon: probabilities that the slice thickness is 1, 1.5 or 2 times the spacing (capped at 3 mm).
        trees: vessel/airway tree growth settings.
    """

    name: str
    matrix: tuple[int, int]
    inplane_spacing: tuple[float, float]
    fov_margin: tuple[float, float]
    slice_spacings: tuple[float, ...]
    slice_weights: tuple[float, ...]
    slice_range: tuple[float, float]
    slices: tuple[int, int]
    thick_recon: tuple[float, float, float]
    trees: TreeParams


PRESETS: dict[str, ScanPreset] = {
    "small": ScanPreset(
        "small",
        (128, 160),
        (2.0, 2.6),
        (1.04, 1.15),
        (),
        (),
        (1.5, 2.5),
        (110, 200),
        (1.0, 0.0, 0.0),
        TreeParams(attractors=450, step=5.0, r_min=0.6, airway_r_min=1.3),
    ),
    "fullsize": ScanPreset(
        "fullsize",
        (512, 512),
        (0.6, 1.0),
        (1.06, 1.32),
        (1.0, 1.25, 1.5, 2.0, 2.5),
        (0.05, 0.3, 0.25, 0.28, 0.12),
        (1.0, 2.5),
        (110, 300),
        (0.75, 0.15, 0.1),
        TreeParams(attractors=4000, step=2.5, r_min=0.45, airway_r_min=0.9),
    ),
}


def sample_grid(rng: np.random.Generator, preset: ScanPreset, model: ChestModel) -> tuple[RenderGrid, np.ndarray]:
    """Choose field of view, spacing, slice count and scanner position for ``model``.

    Returns:
        ``(grid, world_origin)``: the canonical render grid in the patient-local frame, and the LPS world position
        of its voxel ``(0, 0, 0)`` (x, y around -150..-250 mm, z in -320..-60 mm as in LIDC).
    """
    u = rng.uniform
    body_w = 2.0 * model.body_a
    fov = body_w * u(*preset.fov_margin)
    lo_n, hi_n = preset.matrix
    if lo_n == hi_n:
        n = lo_n
    else:
        n = int(np.clip(np.round(fov / u(*preset.inplane_spacing)), lo_n, hi_n))
    spacing = float(np.clip(fov / n, *preset.inplane_spacing))
    spacing = max(spacing, (body_w + 12.0) / n)  # the body must always fit
    fov = spacing * n
    slack_x = max(0.0, 0.5 * fov - model.body_a - 6.0)
    ox = -0.5 * fov + u(-0.5, 0.5) * slack_x
    y_lo, y_hi = -model.body_b_ant, model.body_b_post + 12.0  # keep a little of the CT table in view
    slack_y = max(0.0, fov - (y_hi - y_lo) - 8.0)
    oy = 0.5 * (y_lo + y_hi) - 0.5 * fov + u(-0.5, 0.5) * min(slack_y, 40.0)

    z_lo, z_hi = -u(15.0, 50.0), model.lung_height + u(10.0, 40.0)
    coverage = z_hi - z_lo
    if preset.slice_spacings:
        sz = float(rng.choice(preset.slice_spacings, p=preset.slice_weights))
    else:
        sz = float(np.clip(coverage / rng.integers(preset.slices[0], preset.slices[1] + 1), *preset.slice_range))
    nz = int(np.clip(np.ceil(coverage / sz) + 1, *preset.slices))
    factor = float(rng.choice([1.0, 1.5, 2.0], p=preset.thick_recon))
    thickness = max(sz, min(sz * factor, 3.0))
    grid = RenderGrid(np.array([ox, oy, z_lo]), np.array([spacing, spacing, sz]), (n, n, nz), thickness)
    world_origin = np.array([-0.5 * fov + u(-15.0, 15.0), -0.5 * fov + u(-15.0, 15.0), u(-320.0, -60.0)])
    return grid, world_origin


def signed_permutation(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decompose an axis-aligned direction matrix into ``(perm, signs)``: column j is ``signs[j] * e[perm[j]]``.

    Raises:
        ValueError: the matrix is oblique (not a signed permutation), which the generator cannot render.
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    perm = np.argmax(np.abs(d), axis=0)
    signs = np.sign(d[perm, np.arange(3)])
    if sorted(perm.tolist()) != [0, 1, 2] or not np.allclose(np.abs(d), np.eye(3)[:, perm], atol=1e-6):
        raise ValueError(
            f"direction must be axis-aligned (a signed permutation such as diag(1, 1, -1)), got "
            f"{d.round(4).tolist()}; oblique synthetic scans are not supported"
        )
    return perm, signs


def orient(
    array: np.ndarray, world_origin: np.ndarray, spacing: np.ndarray, direction: np.ndarray | None
) -> tuple[np.ndarray, Geometry]:
    """Re-index a canonical (identity-direction) volume for ``direction``; world positions stay the same.

    Args:
        array: (X, Y, Z) canonical volume.
        world_origin: world position of canonical voxel ``(0, 0, 0)``.
        spacing: canonical spacing (3,).
        direction: target 3x3 direction (columns are index axes); None means identity.

    Returns:
        ``(array, geometry)`` with ``geometry.index_to_world`` giving the same world point for every voxel.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    if direction is None:
        return array, Geometry(world_origin, spacing, np.eye(3), array.shape)
    perm, signs = signed_permutation(direction)
    out = np.transpose(array, perm)
    flips = tuple(j for j in range(3) if signs[j] < 0)
    if flips:
        out = np.flip(out, axis=flips)
    corner = np.zeros(3)
    for j in range(3):
        if signs[j] < 0:
            corner[perm[j]] = array.shape[perm[j]] - 1
    origin = np.asarray(world_origin, dtype=np.float64) + spacing * corner
    return np.ascontiguousarray(out), Geometry(origin, spacing[perm], np.asarray(direction, float), out.shape)


def to_canonical(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
    """Inverse of :func:`orient`: a view indexed along +x, +y, +z world axes and its identity-direction geometry.

    Raises:
        ValueError: ``geometry.direction`` is oblique.
    """
    perm, signs = signed_permutation(geometry.direction)
    flips = tuple(j for j in range(3) if signs[j] < 0)
    arr = np.flip(array, axis=flips) if flips else array
    corner = np.array([(array.shape[j] - 1) if signs[j] < 0 else 0 for j in range(3)], dtype=np.float64)
    origin = geometry.index_to_world(corner)
    inverse = np.argsort(perm)
    arr = np.transpose(arr, inverse)
    return arr, Geometry(origin, geometry.spacing[inverse], np.eye(3), arr.shape)


def _gaussian_noise_gain(sigmas: np.ndarray, truncate: float = 4.0) -> float:
    """Standard deviation of white unit noise after ``scipy.ndimage.gaussian_filter`` with ``sigmas`` (voxels)."""
    gain = 1.0
    for s in sigmas:
        if s <= 0:
            continue
        radius = int(truncate * s + 0.5)
        x = np.arange(-radius, radius + 1)
        w = np.exp(-0.5 * (x / s) ** 2)
        gain *= float(np.sqrt(np.sum((w / w.sum()) ** 2)))
    return gain


def apply_scanner(
    hu: np.ndarray, grid: RenderGrid, rng: np.random.Generator, psf_mm: float, noise_hu: float
) -> np.ndarray:
    """Blur (point-spread function), add correlated noise and quantise to int16 HU.

    White noise is added first and blurred together with the image, so it has CT-like grain; its amplitude is
    scaled so that the noise standard deviation *after* blurring is ``noise_hu``.

    Args:
        hu: (X, Y, Z) float32 HU on ``grid`` (modified in place).
        grid: the render grid.
        rng: random generator.
        psf_mm: in-plane Gaussian blur sigma (mm); along z a third of a slice is added for the slice profile.
        noise_hu: target noise standard deviation (HU).

    Returns:
        (X, Y, Z) int16 HU clipped to the scanner range [-1024, 3071].
    """
    sp = grid.spacing
    sigmas = np.array([max(psf_mm / sp[0], 0.35), max(psf_mm / sp[1], 0.35), max(0.3 * grid.thickness / sp[2], 0.3)])
    gain = _gaussian_noise_gain(sigmas)
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu / gain)
    out = ndimage.gaussian_filter(hu, sigma=sigmas.tolist(), mode="nearest", truncate=4.0)
    np.rint(out, out=out)
    np.clip(out, HU_MIN, HU_MAX, out=out)
    return out.astype(np.int16)
