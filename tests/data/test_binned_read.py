"""Reading a plain .mhd/.raw straight into its binned copy: identical to BinShrink of the whole scan, or declined."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pivot_monai.data.binned_read import SLAB_SLICES, BinnedScan, mhd_payload, read_binned
from pivot_monai.data.geometry import Geometry
from pivot_monai.data.io import CTReadError, read_sitk, value_range
from pivot_monai.data.preprocess import PreprocessConfig, preprocess_image, read_for_preprocessing, shrink_factors
from tests.conftest import FLIP_Z, _make_phantom, _nodule_in_left_lung, oblique_direction

ROTATIONS = {"identity": np.eye(3), "flip": FLIP_Z, "oblique": oblique_direction(12.0)}


def _write(path, hu: np.ndarray, geom: Geometry, **kwargs) -> None:
    image = geom.apply_to_sitk(sitk.GetImageFromArray(np.ascontiguousarray(hu.transpose(2, 1, 0))))
    sitk.WriteImage(image, str(path), **kwargs)


def _factors_for(target):
    return lambda spacing, size: shrink_factors(spacing, np.asarray(target, float), size)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("direction", ["identity", "flip", "oblique"])
@pytest.mark.parametrize("slices", [37, 2 * SLAB_SLICES, 2 * SLAB_SLICES + 3])  # partial bins and slabs at the end
def test_binned_read_equals_binshrink_of_the_whole_scan(tmp_path, rng, direction, dtype, slices):
    geom = Geometry((-61.3, 40.2, -95.0), (0.7, 0.66, 1.25), ROTATIONS[direction], (50, 47, slices))
    hu = rng.integers(-1024, 400, size=geom.size).astype(dtype)
    _write(tmp_path / "scan.mhd", hu, geom)

    binned = read_binned(tmp_path / "scan.mhd", _factors_for((2.0, 2.0, 2.0)))

    whole = read_sitk(tmp_path / "scan.mhd", as_float=False)
    expected = sitk.BinShrink(whole, [3, 3, 2])
    assert isinstance(binned, BinnedScan) and binned.factors.tolist() == [3, 3, 2]
    assert binned.image.GetPixelID() == whole.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(binned.image), sitk.GetArrayFromImage(expected))
    assert binned.image.GetSize() == expected.GetSize()
    assert binned.image.GetOrigin() == expected.GetOrigin()  # exactly: the first slab starts where the scan does
    assert binned.image.GetSpacing() == expected.GetSpacing()
    assert binned.image.GetDirection() == expected.GetDirection()
    np.testing.assert_array_equal(binned.raw_geometry.origin, whole.GetOrigin())
    np.testing.assert_array_equal(binned.raw_geometry.spacing, whole.GetSpacing())
    np.testing.assert_array_equal(binned.raw_geometry.direction.reshape(-1), whole.GetDirection())
    assert binned.raw_geometry.size == whole.GetSize()


@pytest.mark.parametrize("direction", ["identity", "flip", "oblique"])
def test_preprocessing_a_binned_read_gives_the_same_scan(tmp_path, rng, direction):
    geom = Geometry((-51.3, 20.2, -95.0), (0.7, 0.7, 1.25), ROTATIONS[direction], (150, 130, 60))
    nodule = _nodule_in_left_lung(geom)
    _write(tmp_path / "scan.mhd", _make_phantom(geom, nodule, 8.0, rng), geom)
    cfg = PreprocessConfig(target_spacing=(2.0, 2.0, 2.0), crop_margin_mm=6.0)

    source = read_for_preprocessing(tmp_path / "scan.mhd", cfg)
    fast = preprocess_image(source, cfg, nodule[None], np.array([4.0]))
    whole = preprocess_image(read_sitk(tmp_path / "scan.mhd", as_float=False), cfg, nodule[None], np.array([4.0]))

    assert isinstance(source, BinnedScan) and fast.lung_found
    np.testing.assert_array_equal(fast.image, whole.image)
    assert fast.crop_start == whole.crop_start and fast.geometry.size == whole.geometry.size
    np.testing.assert_array_equal(fast.geometry.origin, whole.geometry.origin)
    np.testing.assert_array_equal(fast.raw_geometry.origin, whole.raw_geometry.origin)
    # the nodule's world position lands inside the crop on both paths
    assert fast.geometry.contains_index(fast.geometry.world_to_index(nodule))[0]


def test_other_files_are_left_to_itk(tmp_path, rng):
    geom = Geometry((0.0, 0.0, 0.0), (0.7, 0.7, 1.25), np.eye(3), (30, 30, 20))
    hu = rng.integers(-1024, 400, size=geom.size).astype(np.int16)
    _write(tmp_path / "plain.mhd", hu, geom)
    _write(tmp_path / "packed.mhd", hu, geom, useCompression=True)
    _write(tmp_path / "scan.nii.gz", hu, geom)
    _write(tmp_path / "scan.mha", hu, geom)
    header = (tmp_path / "plain.mhd").read_text()
    assert "BinaryDataByteOrderMSB = False" in header
    (tmp_path / "big.mhd").write_text(header.replace("BinaryDataByteOrderMSB = False", "BinaryDataByteOrderMSB = True"))
    fine = _factors_for((2.0, 2.0, 2.0))

    assert mhd_payload(tmp_path / "plain.mhd") is not None
    for name in ("packed.mhd", "scan.nii.gz", "scan.mha", "big.mhd"):
        assert mhd_payload(tmp_path / name) is None, name
        assert read_binned(tmp_path / name, fine) is None, name
    # nothing to bin at this spacing: the whole scan is the preprocessing input
    assert read_binned(tmp_path / "plain.mhd", _factors_for((1.0, 1.0, 1.25))) is None
    cfg = PreprocessConfig(target_spacing=(2.0, 2.0, 2.0))
    assert isinstance(read_for_preprocessing(tmp_path / "scan.nii.gz", cfg), sitk.Image)


def test_bad_payloads_fail_with_the_file_named(tmp_path, rng):
    geom = Geometry((0.0, 0.0, 0.0), (0.7, 0.7, 1.25), np.eye(3), (30, 30, 20))
    fine = _factors_for((2.0, 2.0, 2.0))
    _write(tmp_path / "short.mhd", rng.integers(-1024, 400, size=geom.size).astype(np.int16), geom)
    raw = tmp_path / "short.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(CTReadError, match=r"short\.mhd: data file short\.raw is truncated"):
        read_binned(tmp_path / "short.mhd", fine)

    odd = Geometry((0.0, 0.0, 0.0), (0.7, 0.7, 1.25), np.eye(3), (30, 30, 21))  # BinShrink drops the last slice
    for name, z in (("nan", 17), ("nan_dropped", 20)):  # a voxel in a late slab, and one in the dropped slice
        values = rng.normal(-500, 300, size=odd.size).astype(np.float32)
        values[3, 4, z] = np.nan
        _write(tmp_path / f"{name}.mhd", values, odd)
        with pytest.raises(CTReadError, match=rf"{name}\.mhd: volume contains NaN"):
            read_binned(tmp_path / f"{name}.mhd", fine)

    _write(tmp_path / "unscaled.mhd", rng.integers(0, 50, size=geom.size).astype(np.int16), geom)
    with pytest.raises(CTReadError, match=r"unscaled\.mhd: values .* do not look like CT"):
        read_binned(tmp_path / "unscaled.mhd", fine)


def test_value_range_is_min_and_max_for_every_type(rng):
    for dtype in (np.int16, np.uint16, np.uint8, np.float32, np.float64):
        values = rng.integers(0, 200, size=(7, 9, 11)).astype(dtype)
        values.flags.writeable = False  # as SimpleITK's array views and memory maps are
        assert value_range(values) == (float(values.min()), float(values.max()))
    with_nan = np.zeros((4, 4, 4), np.float32)
    with_nan[1, 2, 3] = np.nan
    assert all(np.isnan(value_range(with_nan)))


def _range_in_forked_child(values: np.ndarray, queue) -> None:
    queue.put(value_range(values))


def test_value_range_works_in_a_child_forked_after_torch_ran_in_parallel():
    # pivot preprocess forks its workers; a child cannot use the OpenMP threads its parent started (torch crashed)
    import multiprocessing

    import torch

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    torch.set_num_threads(2)
    big = np.arange(4_000_000, dtype=np.int16)
    assert value_range(big) == (-32768.0, 32767.0)  # in this process: torch, with its OpenMP threads started
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_range_in_forked_child, args=(big, queue))
    child.start()
    child.join(30)
    assert child.exitcode == 0, f"forked child died with exit code {child.exitcode}"
    assert queue.get(timeout=5) == (-32768.0, 32767.0)
