"""The lung mask's hole filling: one call with an in-slice structure equals filling each axial slice."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pivot_monai.data.lungs import _IN_SLICE, lung_box


def test_in_slice_fill_equals_filling_each_slice(rng):
    mask = np.zeros((40, 36, 12), bool)
    mask[5:35, 4:32, :] = True
    mask[rng.random(mask.shape) < 0.08] = False  # holes everywhere, the first and last slices too
    mask[10:14, 10:14, 3:] = False  # a tube: enclosed in each slice, but open to the top face of the volume
    mask[0:8, 18, 6] = True  # a wall reaching the border
    expected = mask.copy()
    for z in range(mask.shape[2]):
        expected[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])

    filled = ndimage.binary_fill_holes(mask, structure=_IN_SLICE)

    np.testing.assert_array_equal(filled, expected)
    assert filled[10:14, 10:14, 3:].all() and filled[:, :, 0].sum() > mask[:, :, 0].sum()
    # a 3D fill leaves the tube open: the in-slice structure is what makes it per slice
    assert not ndimage.binary_fill_holes(mask)[10:14, 10:14, 3:].any()


def _chest(lung_z: slice) -> np.ndarray:
    """(X, Y, Z) HU: air around a soft-tissue body with two air-filled lungs (with a vessel each) over ``lung_z``."""
    x, y = np.meshgrid(np.arange(64), np.arange(56), indexing="ij")
    body = ((x - 32) / 28.0) ** 2 + ((y - 28) / 22.0) ** 2 <= 1.0
    hu = np.where(body[..., None], 40.0, -1000.0) * np.ones((1, 1, 30))
    for cx in (20, 44):
        lung = ((x - cx) / 9.0) ** 2 + ((y - 28) / 13.0) ** 2 <= 1.0
        hu[lung, lung_z] = -850.0
        hu[cx, 28, lung_z] = 30.0  # a vessel: a hole the mask fills
    return hu.astype(np.int16)


def test_lung_box_is_the_box_of_the_lung_mask_without_filling_or_closing():
    from pivot_monai.data.lungs import lung_bounding_box, lung_box, segment_lungs

    spacing = np.array([4.0, 4.0, 4.0])
    inside = _chest(slice(5, 25))
    box = lung_box(inside, spacing)
    assert box is not None
    np.testing.assert_array_equal(np.stack(box), np.stack(lung_bounding_box(segment_lungs(inside, spacing))))
    np.testing.assert_array_equal(box[0], [11, 15, 5])
    np.testing.assert_array_equal(box[1], [53, 41, 24])
    # lungs reaching the top face: SciPy's closing erodes the face slice from the mask; the box keeps it
    to_face = _chest(slice(5, 30))
    assert lung_box(to_face, spacing)[1][2] == 29
    assert lung_bounding_box(segment_lungs(to_face, spacing))[1][2] < 29
    assert lung_box(np.full((20, 20, 10), 40, np.int16), spacing) is None  # no air at all


def test_lung_box_keeps_juxtapleural_nodules_whole():
    """Nodules touching the pleura lie on the lung's edge: the crop (lung box + its 10 mm margin) keeps them whole."""
    from pivot_monai.data.synthetic import scan_rng, synthesize_scan

    checked = 0
    for index in range(40):
        scan = synthesize_scan(scan_rng(31, index), "small")
        pleural = [
            (f["world"], f["diameter_mm"])
            for f in scan.findings
            if f["placement"] == "juxtapleural" and not f["excluded"]
        ]
        if not pleural:
            continue
        spacing = np.asarray(scan.geometry.spacing)
        lo, hi = lung_box(scan.array, spacing)
        margin = np.ceil(10.0 / spacing)
        for world, diameter in pleural:
            centre = scan.geometry.world_to_index(np.asarray(world))
            reach = 0.5 * diameter / spacing
            assert np.all(centre - reach >= lo - margin) and np.all(centre + reach <= hi + margin), (index, world)
            checked += 1
        if checked >= 4:
            break
    assert checked >= 4
