from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pivot_monai.data.geometry import Geometry
from pivot_monai.data.io import CTReadError, find_scans, read_ct, read_sitk, seriesuid_from_path, write_image
from tests.conftest import FLIP_Z, oblique_direction


def _volume(rng, size=(12, 10, 8)):
    return rng.integers(-1000, 400, size=size).astype(np.int16)


@pytest.mark.parametrize("suffix", [".mhd", ".nii.gz", ".nii"])
@pytest.mark.parametrize("direction", [np.eye(3), FLIP_Z, oblique_direction()], ids=["identity", "flip", "oblique"])
def test_read_keeps_hu_and_geometry(tmp_path, rng, suffix, direction):
    geom = Geometry((-150.2, -170.0, -320.5), (0.7, 0.8, 2.5), direction, (12, 10, 8))
    arr = _volume(rng)
    path = write_image(arr, geom, tmp_path / f"1.2.3{suffix}")
    vol = read_ct(path)
    assert vol.seriesuid == "1.2.3"
    np.testing.assert_array_equal(vol.array, arr.astype(np.float32))
    np.testing.assert_allclose(vol.geometry.origin, geom.origin, atol=1e-4)
    np.testing.assert_allclose(vol.geometry.spacing, geom.spacing, atol=1e-5)
    np.testing.assert_allclose(vol.geometry.direction, geom.direction, atol=1e-5)
    assert vol.geometry.size == geom.size


def _write_dicom_series(folder, arr, geom):
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(arr.transpose(2, 1, 0))
    geom.apply_to_sitk(image)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1"
    for k in range(arr.shape[2]):
        sl = image[:, :, k]
        pos = geom.index_to_world([0, 0, k])
        for tag, value in {
            "0020|000e": series_uid,
            "0020|0032": "\\".join(f"{v:.4f}" for v in pos),
            "0020|0037": "\\".join(f"{v:.6f}" for v in geom.direction[:, :2].T.reshape(-1)),
            "0020|0013": str(k + 1),
            "0008|0060": "CT",
            "0028|1052": "0",
            "0028|1053": "1",
            "0018|0050": f"{geom.spacing[2]:.4f}",
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def test_read_dicom_series_folder(tmp_path, rng):
    geom = Geometry((-100.0, -120.0, -50.0), (0.75, 0.75, 2.0), np.eye(3), (12, 10, 6))
    arr = _volume(rng, (12, 10, 6))
    _write_dicom_series(tmp_path / "series", arr, geom)
    assert find_scans(tmp_path) == [tmp_path / "series"]
    vol = read_ct(tmp_path / "series")
    np.testing.assert_array_equal(vol.array, arr.astype(np.float32))
    np.testing.assert_allclose(vol.geometry.origin, geom.origin, atol=1e-3)
    np.testing.assert_allclose(vol.geometry.spacing, geom.spacing, atol=1e-3)


def test_missing_raw_is_a_clear_error(tmp_path, rng):
    path = write_image(_volume(rng), Geometry((0, 0, 0), (1, 1, 1), size=(12, 10, 8)), tmp_path / "a.mhd")
    (tmp_path / "a.raw").unlink()
    with pytest.raises(CTReadError, match=r"a\.mhd.*a\.raw is missing"):
        read_ct(path)


def test_truncated_raw_is_a_clear_error(tmp_path, rng):
    path = write_image(_volume(rng), Geometry((0, 0, 0), (1, 1, 1), size=(12, 10, 8)), tmp_path / "a.mhd")
    raw = tmp_path / "a.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(CTReadError, match="truncated"):
        read_ct(path)


def test_garbage_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "b.nii.gz"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(CTReadError, match=r"b\.nii\.gz: unreadable"):
        read_ct(bad)


def test_2d_image_is_rejected(tmp_path):
    img = sitk.Image(32, 32, sitk.sitkInt16)
    sitk.WriteImage(img, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(CTReadError, match="3D"):
        read_ct(tmp_path / "flat.nii.gz")


def test_non_ct_values_are_rejected(tmp_path):
    arr = np.full((8, 8, 8), 0.5, dtype=np.float32)
    path = write_image(arr, Geometry((0, 0, 0), (1, 1, 1), size=(8, 8, 8)), tmp_path / "prob.nii.gz")
    with pytest.raises(CTReadError, match="Hounsfield"):
        read_ct(path)


def test_seriesuid_from_path():
    assert seriesuid_from_path("x/1.3.6.1.4.mhd") == "1.3.6.1.4"
    assert seriesuid_from_path("x/1.3.6.nii.gz") == "1.3.6"
    assert seriesuid_from_path("x/dicomdir") == "dicomdir"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_values_are_rejected_with_the_file_name(tmp_path, rng, bad):
    arr = _volume(rng).astype(np.float32)
    arr[3, 4, 5] = bad
    path = write_image(arr, Geometry((0.0, 0.0, 0.0), (1.0, 1.0, 2.0), np.eye(3), arr.shape), tmp_path / "1.2.9.mhd")
    with pytest.raises(CTReadError, match=r"1\.2\.9\.mhd: volume contains NaN or infinite values"):
        read_ct(path)


def test_integer_scans_read_as_float32_hu(tmp_path, rng):
    arr = _volume(rng)
    path = write_image(arr, Geometry((0.0, 0.0, 0.0), (1.0, 1.0, 2.0), np.eye(3), arr.shape), tmp_path / "1.2.8.mhd")
    vol = read_ct(path)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, arr.astype(np.float32))


def test_read_can_keep_the_stored_integer_type(tmp_path, rng):
    arr = _volume(rng)
    geom = Geometry((-12.5, 30.0, -80.0), (0.7, 0.7, 2.5), np.eye(3), arr.shape)
    path = write_image(arr, geom, tmp_path / "1.2.7.mhd")
    image = read_sitk(path, as_float=False)
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image).transpose(2, 1, 0), arr)
    assert read_sitk(path).GetPixelID() == sitk.sitkFloat32
