"""The lung mask's hole filling: one call with an in-slice structure equals filling each axial slice."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pivot_monai.data.lungs import _IN_SLICE


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
