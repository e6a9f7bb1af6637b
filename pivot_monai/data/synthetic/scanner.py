"""Scanner side of the synthetic CT: acquisition presets, field of view, orientation, blur, noise, quantisation.

Presets (see :data:`PRESETS`):

* ``small``: 128-160 px in-plane at ~2.0-2.6 mm (the field of view still covers the chest), 110-200 slices at
  1.5-2.5 mm (LUNA16 keeps only scans with slices of at most 2.5 mm: at 3-4 mm a 4 mm nodule is one partial-volume
  voxel and cannot be told from a vessel); under a second per scan, for tests and quick demos.
* ``medium``: 240-352 px in-plane at 0.9-1.4 mm, slices of 1.25-2.5 mm: real-CT density and close to real-CT
  resolution at a quarter of ``fullsize``'s voxels; what ``make demo`` trains on.
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
    "add_streaks",
    "apply_scanner",
    "orient",
    "sample_grid",
    "signed_permutation",
    "to_canonical",
]

HU_MIN, HU_MAX = -1024.0, 3071.0
GENERATOR_VERSION = 5
"""Bumped when the same seed renders different scans (3: domains, denser vessel trees reaching the pleura,
fissures, emphysema and scars, sharp kernels, streaks and motion, barrel-shaped lungs, the ``medium`` preset;
4: interleaved domain bands, the training domain spanning the real-CT range of each axis; 5: lungs 10 HU less
dense, ground-glass bands over the real -700..-300 HU range)."""


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
        TreeParams(attractors=700, step=4.5, r_min=0.6, airway_r_min=1.3),
    ),
    "medium": ScanPreset(
        "medium",
        (240, 352),
        (0.9, 1.4),
        (1.06, 1.3),
        (1.25, 1.5, 2.0, 2.5),
        (0.25, 0.3, 0.3, 0.15),
        (1.25, 2.5),
        (90, 300),
        (0.8, 0.15, 0.05),
        TreeParams(attractors=5000, step=2.8, r_min=0.5, airway_r_min=1.0),
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
        TreeParams(attractors=8000, step=2.3, r_min=0.45, airway_r_min=0.9),
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


def _noise_gain(sigmas: np.ndarray, sharpness: float, sharp_sigmas: np.ndarray) -> float:
    """Standard deviation of white unit noise after the point-spread blur and the kernel's edge enhancement.

    Without enhancement this is the separable Gaussian's closed form; with it, it is measured once on a small
    fixed noise volume (its own generator, so the scan's random stream is not consumed).
    """
    if sharpness <= 0:
        return _gaussian_noise_gain(sigmas)
    probe = np.random.default_rng(0).standard_normal((40, 40, 40)).astype(np.float32)
    out = ndimage.gaussian_filter(probe, sigma=sigmas.tolist(), mode="wrap")
    out = (1.0 + sharpness) * out - sharpness * ndimage.gaussian_filter(out, sigma=sharp_sigmas.tolist(), mode="wrap")
    return float(out.std())


def add_streaks(
    hu: np.ndarray, grid: RenderGrid, rng: np.random.Generator, centre_xy: np.ndarray, slices: range
) -> None:
    """Add bone/metal streak artefacts to ``slices`` of ``hu`` (in place, before the scanner blur).

    Each slice gets a few alternating bright and dark lines through a point near ``centre_xy`` (local mm), as
    photon starvation behind the shoulders or a metal implant gives; they change from slice to slice.
    """
    x = grid.axis(0)[:, None]
    y = grid.axis(1)[None, :]
    amplitude = rng.uniform(30.0, 120.0)
    for k in slices:
        c = np.asarray(centre_xy, dtype=np.float64) + rng.normal(0.0, 15.0, 2)
        sl = hu[:, :, k]
        for j in range(int(rng.integers(3, 9))):
            theta = rng.uniform(0.0, np.pi)
            dist = np.abs((x - c[0]) * np.sin(theta) - (y - c[1]) * np.cos(theta))
            width = rng.uniform(0.8, 2.5)
            sign = 1.0 if j % 2 == 0 else -1.0
            sl += np.float32(sign * amplitude * rng.uniform(0.4, 1.0)) * np.exp(-0.5 * (dist / width) ** 2)


def apply_scanner(
    hu: np.ndarray,
    grid: RenderGrid,
    rng: np.random.Generator,
    psf_mm: float,
    noise_hu: float,
    sharpness: float = 0.0,
    motion: tuple[int, int, float] | None = None,
) -> np.ndarray:
    """Blur (point-spread function), add correlated noise, apply the kernel and motion, quantise to int16 HU.

    White noise is added first and blurred together with the image, so it has CT-like grain; its amplitude is
    scaled so that the noise standard deviation of the final image (after any edge enhancement) is ``noise_hu``.

    Args:
        hu: (X, Y, Z) float32 HU on ``grid`` (modified in place).
        grid: the render grid.
        rng: random generator.
        psf_mm: in-plane Gaussian blur sigma (mm); along z a third of a slice is added for the slice profile.
        noise_hu: target noise standard deviation (HU).
        sharpness: edge enhancement of a sharp reconstruction kernel, ``(1 + s) I - s G(1 mm)`` in-plane, which
            gives the over- and undershoot at edges of lung/bone kernels; 0 is a soft kernel.
        motion: ``(first_slice, stop_slice, sigma_mm)``: breathing-motion blur along y and z on those slices.

    Returns:
        (X, Y, Z) int16 HU clipped to the scanner range [-1024, 3071].
    """
    sp = grid.spacing
    if motion is not None:  # the patient moves, then the detector adds noise: blur the anatomy, fading in and out
        k0, k1, sigma_mm = motion
        slab = hu[:, :, k0:k1]
        blurred = ndimage.gaussian_filter(slab, sigma=[0.0, sigma_mm / sp[1], sigma_mm / sp[2]], mode="nearest")
        weight = np.sin(np.linspace(0.0, np.pi, k1 - k0, dtype=np.float32)) ** 2
        slab += weight * (blurred - slab)
        del blurred
    sigmas = np.array([max(psf_mm / sp[0], 0.35), max(psf_mm / sp[1], 0.35), max(0.3 * grid.thickness / sp[2], 0.3)])
    sharp_sigmas = np.array([1.0 / sp[0], 1.0 / sp[1], 0.0])
    gain = _noise_gain(sigmas, sharpness, sharp_sigmas)
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu / gain)
    out = ndimage.gaussian_filter(hu, sigma=sigmas.tolist(), mode="nearest", truncate=4.0)
    if sharpness > 0:
        low = ndimage.gaussian_filter(out, sigma=sharp_sigmas.tolist(), mode="nearest", truncate=3.0)
        out *= np.float32(1.0 + sharpness)
        out -= np.float32(sharpness) * low
        del low
    np.rint(out, out=out)
    np.clip(out, HU_MIN, HU_MAX, out=out)
    return out.astype(np.int16)
