"""Property-based tests (hypothesis): world <-> voxel transforms and the LUNA16 CSV round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pivot_monai.data.annotations import Nodule, read_annotations, write_annotations
from pivot_monai.data.geometry import Geometry
from pivot_monai.metrics.froc import read_submission_csv, write_submission_csv
from pivot_monai.metrics.matching import ScanCandidates

SETTINGS = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

coord = st.floats(-500, 500, allow_nan=False, allow_infinity=False)
spacing = st.floats(0.2, 6.0, allow_nan=False)
angle = st.floats(-math.pi, math.pi, allow_nan=False)


def _rotation(a: float, b: float, c: float, flips: tuple[bool, bool, bool]) -> np.ndarray:
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rx = np.array([[1, 0, 0], [0, math.cos(c), -math.sin(c)], [0, math.sin(c), math.cos(c)]])
    return rz @ ry @ rx @ np.diag([-1.0 if f else 1.0 for f in flips])


geometries = st.builds(
    lambda o, s, r, fl, size: Geometry(o, s, _rotation(*r, fl), size),
    st.tuples(coord, coord, coord),
    st.tuples(spacing, spacing, spacing),
    st.tuples(angle, angle, angle),
    st.tuples(st.booleans(), st.booleans(), st.booleans()),
    st.tuples(*[st.integers(2, 600)] * 3),
)


@SETTINGS
@given(geometries, st.lists(st.tuples(coord, coord, coord), min_size=1, max_size=8))
def test_world_to_index_inverts_index_to_world(geometry, points):
    index = np.asarray(points)
    back = geometry.world_to_index(geometry.index_to_world(index))
    np.testing.assert_allclose(back, index, atol=1e-6)


@SETTINGS
@given(geometries, st.tuples(coord, coord, coord))
def test_index_to_world_matches_simpleitk(geometry, index):
    image = geometry.apply_to_sitk(sitk.Image(2, 2, 2, sitk.sitkUInt8))
    expected = image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in index))
    np.testing.assert_allclose(geometry.index_to_world(np.asarray(index)), expected, atol=1e-6)


@SETTINGS
@given(geometries)
def test_corner_voxels_are_inside_and_one_voxel_beyond_is_outside(geometry):
    last = np.asarray(geometry.size, dtype=float) - 1
    assert geometry.contains_index(np.zeros(3))[0] and geometry.contains_index(last)[0]
    assert not geometry.contains_index(last + np.array([1.0, 0, 0]))[0]
    assert not geometry.contains_index(np.array([0, -1.0, 0]))[0]


@SETTINGS
@given(geometries, st.tuples(*[st.integers(0, 1)] * 3))
def test_a_crop_keeps_world_positions(geometry, start):
    stop = tuple(max(a + 1, s) for a, s in zip(start, geometry.size))
    sub = geometry.crop(start, stop)
    index = np.asarray([0.5, 0.25, 0.75])
    np.testing.assert_allclose(sub.index_to_world(index), geometry.index_to_world(index + np.asarray(start)), atol=1e-6)


uids = st.from_regex(r"1\.3\.6\.1\.[0-9]{1,6}(\.[0-9]{1,6}){0,4}", fullmatch=True)
diameters = st.floats(0.5, 60.0, allow_nan=False)
ratings = st.one_of(st.none(), st.integers(1, 5).map(float))
nodules = st.builds(lambda u, w, d, m: Nodule(u, w, d, m), uids, st.tuples(coord, coord, coord), diameters, ratings)


@pytest.fixture
def csv_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("csv")


@SETTINGS
@given(st.lists(nodules, max_size=12, unique_by=lambda n: (n.seriesuid, *(round(v, 3) for v in n.world))))
def test_annotations_round_trip_to_the_written_precision(csv_dir, rows):
    path = write_annotations(csv_dir / "annotations.csv", rows)
    back = read_annotations(path)
    assert sum(len(v) for v in back.values()) == len(rows)
    flat = [n for uid in dict.fromkeys(r.seriesuid for r in rows) for n in back[uid]]
    expected = sorted(rows, key=lambda n: list(dict.fromkeys(r.seriesuid for r in rows)).index(n.seriesuid))
    for got, want in zip(flat, expected):
        assert got.seriesuid == want.seriesuid and got.malignancy == want.malignancy
        np.testing.assert_allclose(got.world, want.world, atol=1e-4)
        assert abs(got.diameter_mm - want.diameter_mm) <= 1e-4


@SETTINGS
@given(
    st.dictionaries(
        uids,
        st.lists(st.tuples(coord, coord, coord, st.floats(0, 1, allow_nan=False)), min_size=1, max_size=6),
        max_size=4,
    )
)
def test_submission_csv_round_trips(csv_dir, scans):
    candidates = {
        uid: ScanCandidates(np.asarray([r[:3] for r in rows]), np.asarray([r[3] for r in rows]))
        for uid, rows in scans.items()
    }
    back = read_submission_csv(write_submission_csv(csv_dir / "candidates.csv", candidates))
    assert set(back) == set(candidates)
    for uid, cands in candidates.items():
        np.testing.assert_allclose(back[uid].world, cands.world, atol=1e-3)
        np.testing.assert_allclose(back[uid].probability, cands.probability, atol=1e-6)


@SETTINGS
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_any_text_as_annotations_is_read_or_refused_clearly(csv_dir, text):
    from pivot_monai.data.annotations import AnnotationError

    path = csv_dir / "fuzz.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n" + text, encoding="utf-8")
    try:
        read_annotations(path)
    except AnnotationError as err:
        assert str(path) in str(err)
