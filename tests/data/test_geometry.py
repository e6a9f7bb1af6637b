from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pivot_monai.data.geometry import Geometry
from tests.conftest import FLIP_Z, oblique_direction

DIRECTIONS = {"identity": np.eye(3), "flipped": FLIP_Z @ np.diag([-1.0, 1.0, 1.0]), "oblique": oblique_direction()}


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_world_voxel_round_trip_is_exact(name, rng):
    geom = Geometry(
        origin=(-187.4, 12.5, -401.0), spacing=(0.68, 0.68, 2.5), direction=DIRECTIONS[name], size=(512, 512, 140)
    )
    idx = rng.uniform(-5, 500, size=(200, 3))
    back = geom.world_to_index(geom.index_to_world(idx))
    np.testing.assert_allclose(back, idx, atol=1e-9)


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_index_to_world_matches_simpleitk(name, rng):
    geom = Geometry(origin=(10.0, -20.0, 30.0), spacing=(0.8, 1.1, 2.0), direction=DIRECTIONS[name], size=(8, 9, 10))
    image = geom.apply_to_sitk(sitk.Image(8, 9, 10, sitk.sitkInt16))
    for idx in rng.uniform(0, 8, size=(20, 3)):
        expected = image.TransformContinuousIndexToPhysicalPoint(idx.tolist())
        np.testing.assert_allclose(geom.index_to_world(idx), expected, atol=1e-9)
        np.testing.assert_allclose(geom.world_to_index(expected), idx, atol=1e-9)


def test_crop_and_resample_keep_world_positions():
    geom = Geometry(origin=(-100.0, 50.0, -200.0), spacing=(0.7, 0.7, 2.5), direction=FLIP_Z, size=(100, 100, 40))
    cropped = geom.crop((10, 20, 5), (60, 80, 30))
    np.testing.assert_allclose(cropped.index_to_world([0, 0, 0]), geom.index_to_world([10, 20, 5]))
    np.testing.assert_allclose(cropped.index_to_world([3, 4, 5]), geom.index_to_world([13, 24, 10]))
    assert cropped.size == (50, 60, 25)
    res = geom.resampled((1.4, 1.4, 1.25))
    assert res.size == (50, 50, 80)
    np.testing.assert_allclose(res.index_to_world([2, 0, 0]), geom.index_to_world([4, 0, 0]))


def test_serialisation_round_trip():
    geom = Geometry((1.0, 2.0, 3.0), (0.5, 0.6, 0.7), oblique_direction(), (4, 5, 6))
    again = Geometry.from_dict(geom.to_dict())
    np.testing.assert_allclose(again.index_to_world_matrix, geom.index_to_world_matrix)
    assert again.size == geom.size


@pytest.mark.parametrize(
    "bad",
    [
        {"spacing": (0.0, 1.0, 1.0)},
        {"spacing": (1.0, -1.0, 1.0)},
        {"direction": np.zeros((3, 3))},
        {"origin": (1.0, 2.0)},
    ],
)
def test_invalid_geometry_raises(bad):
    kwargs = {"origin": (0, 0, 0), "spacing": (1, 1, 1), "direction": np.eye(3), **bad}
    with pytest.raises(ValueError):
        Geometry(**kwargs)


def test_ras_affine_flips_x_and_y():
    geom = Geometry((10.0, 20.0, 30.0), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(geom.affine_ras()[:3, 3], [-10.0, -20.0, 30.0])
