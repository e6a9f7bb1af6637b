from __future__ import annotations

import json
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from pivot_monai.cli import main
from pivot_monai.data.geometry import Geometry
from pivot_monai.data.preprocess import PreprocessConfig
from pivot_monai.data.raw_dataset import preprocess_dataset
from tests.conftest import FLIP_Z, oblique_direction

CFG = PreprocessConfig(target_spacing=(1.5, 1.5, 1.5), crop_margin_mm=6.0)


def _geoms():
    return {
        "1.2.aniso": Geometry((-172.3, -145.8, -312.5), (1.4, 1.4, 2.5), np.eye(3), (110, 96, 40)),
        "1.2.flip": Geometry((-80.0, 60.0, -40.0), (1.2, 1.2, 2.0), FLIP_Z, (120, 100, 44)),
        "1.2.oblique": Geometry((20.0, -30.0, 100.0), (1.3, 1.3, 1.8), oblique_direction(12.0), (110, 100, 44)),
    }


def _load(out, uid):
    meta = json.loads((out / uid / "meta.json").read_text())
    image = nib.load(out / uid / "image.nii.gz").get_fdata()
    label = np.asarray(nib.load(out / uid / "label.nii.gz").dataobj)
    return meta, image, label


def test_nodule_centre_lands_in_its_sphere_and_maps_back_to_world(make_raw_dataset, tmp_path):
    root, truth = make_raw_dataset(_geoms())
    out = tmp_path / "processed"
    report = preprocess_dataset(root, out, CFG)
    assert sorted(report["ok"]) == sorted(truth) and not report["failed"]
    for uid, (_, centre, _diameter) in truth.items():
        meta, image, label = _load(out, uid)
        geom = Geometry.from_dict(meta["processed_geometry"])
        assert image.shape == geom.size and label.shape == geom.size
        assert 0.0 <= image.min() and image.max() <= 1.0
        np.testing.assert_allclose(geom.spacing, CFG.target_spacing)
        voxel = np.asarray(meta["nodules"][0]["voxel"])
        assert label[tuple(np.round(voxel).astype(int))] == 1
        # processed voxel -> world is exact, and the label sphere's centroid is within half a voxel of the truth
        np.testing.assert_allclose(geom.index_to_world(voxel), centre, atol=1e-3)  # CSV keeps 4 decimals
        centroid = np.argwhere(label == 1).mean(axis=0)
        assert np.all(np.abs(centroid - voxel) <= 0.5), (uid, centroid, voxel)
        assert np.linalg.norm(geom.index_to_world(centroid) - centre) <= 0.5 * np.linalg.norm(geom.spacing)
        # the nodule is bright in the processed image (solid, ~30 HU -> ~0.73 after the window)
        assert image[tuple(np.round(voxel).astype(int))] > 0.6
        # crop keeps the processed grid inside the raw field of view and smaller than it
        assert np.prod(geom.size) * np.prod(geom.spacing) < np.prod(meta["raw_geometry"]["size"]) * np.prod(
            meta["raw_geometry"]["spacing"]
        )


def test_rerun_skips_finished_scans_and_overwrite_redoes_them(make_raw_dataset, tmp_path):
    root, truth = make_raw_dataset({k: v for k, v in list(_geoms().items())[:1]})
    out = tmp_path / "processed"
    preprocess_dataset(root, out, CFG)
    again = preprocess_dataset(root, out, CFG)
    assert again["skipped"] == list(truth) and not again["ok"]
    assert preprocess_dataset(root, out, CFG, overwrite=True)["ok"] == list(truth)


def _break(root, case):
    mhd = sorted((root / "subset0").glob("*.mhd"))[0]
    uid = mhd.name[:-4]
    if case == "missing_raw":
        mhd.with_suffix(".raw").unlink()
    elif case == "truncated_raw":
        raw = mhd.with_suffix(".raw")
        raw.write_bytes(raw.read_bytes()[:1000])
    elif case == "unreadable":
        mhd.write_text("garbage header\n")
    elif case == "outside":
        csv = root / "annotations.csv"
        rows = [ln.split(",") for ln in csv.read_text().splitlines()]
        for row in rows[1:]:
            if row[0] == uid:
                row[1] = "9999.0"
        csv.write_text("\n".join(",".join(r) for r in rows) + "\n")
    elif case == "unknown_uid":
        (root / "seriesuids.csv").write_text(
            "seriesuid\n" + "\n".join(p.name[:-4] for p in sorted((root / "subset0").glob("*.mhd"))[1:]) + "\n"
        )
    return uid


@pytest.mark.parametrize("case", ["missing_raw", "truncated_raw", "unreadable", "unknown_uid"])
def test_broken_scan_is_reported_and_others_continue(make_raw_dataset, tmp_path, case, caplog):
    root, truth = make_raw_dataset({k: v for k, v in list(_geoms().items())[:2]})
    bad = _break(root, case)
    out = tmp_path / "processed"
    code = main(["preprocess", "--input-dir", str(root), "--output-dir", str(out)])
    assert code == 1
    report = json.loads((out / "preprocess_report.json").read_text())
    assert [f["seriesuid"] for f in report["failed"]] == [bad]
    err = report["failed"][0]["error"]
    assert bad in err
    assert {
        "missing_raw": "missing",
        "truncated_raw": "truncated",
        "unreadable": "unreadable",
        "unknown_uid": "seriesuid list",
    }[case] in err
    good = [u for u in truth if u != bad]
    assert report["ok"] == good and (out / good[0] / "meta.json").exists()
    assert not (out / bad / "meta.json").exists()


def test_an_annotation_outside_its_image_is_skipped_with_a_warning_and_the_scan_kept(
    make_raw_dataset, tmp_path, caplog
):
    root, truth = make_raw_dataset({k: v for k, v in list(_geoms().items())[:2]})
    bad = _break(root, "outside")
    out = tmp_path / "processed"
    with caplog.at_level("WARNING"):
        code = main(["preprocess", "--input-dir", str(root), "--output-dir", str(out)])
    assert code == 0
    report = json.loads((out / "preprocess_report.json").read_text())
    assert report["ok"] == sorted(truth) and not report["failed"]
    assert json.loads((out / bad / "meta.json").read_text())["nodules"] == []
    good = next(u for u in truth if u != bad)
    assert len(json.loads((out / good / "meta.json").read_text())["nodules"]) == 1
    assert "outside the image" in caplog.text and "skipped" in caplog.text and bad in caplog.text


@pytest.mark.parametrize("diameter", ["nan", "0", "-2"])
def test_bad_diameter_in_csv_fails_with_clear_error(make_raw_dataset, tmp_path, diameter, caplog):
    root, _ = make_raw_dataset({k: v for k, v in list(_geoms().items())[:1]})
    csv = root / "annotations.csv"
    head, row = csv.read_text().splitlines()[:2]
    parts = row.split(",")
    parts[4] = diameter
    csv.write_text(head + "\n" + ",".join(parts) + "\n")
    assert main(["preprocess", "--input-dir", str(root), "--output-dir", str(tmp_path / "p")]) == 2
    assert "diameter_mm" in caplog.text and "annotations.csv:2" in caplog.text


def test_parallel_workers_give_same_result(make_raw_dataset, tmp_path):
    root, truth = make_raw_dataset({k: v for k, v in list(_geoms().items())[:2]})
    a = preprocess_dataset(root, tmp_path / "a", CFG, workers=1)
    b = preprocess_dataset(root, tmp_path / "b", CFG, workers=2)
    assert a["ok"] == b["ok"] == sorted(truth)
    for uid in truth:
        np.testing.assert_array_equal(_load(tmp_path / "a", uid)[1], _load(tmp_path / "b", uid)[1])


def test_config_data_section_is_used(tmp_path):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(
        "data:\n  target_spacing: [2.0, 2.0, 2.5]\n  hu_window: [-1200, 600]\n"
        "  lung_crop: {enabled: false, margin_mm: 3}\n"
    )
    from pivot_monai.config import load_section

    cfg = PreprocessConfig.from_data_section(load_section("data", cfg_file))
    assert cfg.target_spacing == (2.0, 2.0, 2.5) and cfg.hu_window == (-1200.0, 600.0)
    assert cfg.lung_crop is False and cfg.crop_margin_mm == 3.0
    with pytest.raises(ValueError, match="hu_window"):
        PreprocessConfig(hu_window=(400, -1000))


def _sphere_scan(direction: str, dtype: type) -> tuple[Any, Geometry, np.ndarray, np.ndarray]:
    """A 0.7 x 0.7 x 1.25 mm scan holding one 8 mm sphere of 100 HU in -900 HU: (image, geometry, hu, centre)."""
    import SimpleITK as sitk

    rot = {"identity": np.eye(3), "flip": FLIP_Z, "oblique": oblique_direction(12.0)}[direction]
    raw_geom = Geometry((-61.3, 40.2, -95.0), (0.7, 0.7, 1.25), rot, (160, 150, 70))
    centre_world = raw_geom.index_to_world(np.array([83.3, 71.6, 33.4]))
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in raw_geom.size], indexing="ij"), -1).reshape(-1, 3)
    dist = np.linalg.norm(raw_geom.index_to_world(ijk.astype(float)) - centre_world, axis=1)
    hu = np.where(dist <= 4.0, 100.0, -900.0).reshape(raw_geom.size).astype(dtype)
    return raw_geom.apply_to_sitk(sitk.GetImageFromArray(hu.transpose(2, 1, 0))), raw_geom, hu, centre_world


def _spread_mm2(out: np.ndarray, target: Geometry) -> np.ndarray:
    """Per-axis variance (mm**2, along the grid axes) of the HU excess over -900 in ``out``."""
    weight = np.clip(out + 900.0, 0, None).reshape(-1, 1)
    mm = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij"), -1).reshape(-1, 3) * target.spacing
    mean = (mm * weight).sum(0) / weight.sum()
    return ((mm - mean) ** 2 * weight).sum(0) / weight.sum()


def _centroid_world(out: np.ndarray, target: Geometry) -> np.ndarray:
    weight = np.clip(out + 900.0, 0, None)
    t_ijk = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij"), -1).reshape(-1, 3)
    return target.index_to_world((t_ijk * weight.reshape(-1, 1)).sum(0) / weight.sum())


@pytest.mark.parametrize("direction", ["identity", "flip", "oblique"])
def test_area_low_pass_averages_whole_bins_and_keeps_world_positions(direction):
    # a 0.7 x 0.7 x 1.25 mm scan going to 2 mm: BinShrink of the whole scan by round(ratio) = (3, 3, 2), then linear
    import SimpleITK as sitk

    from pivot_monai.data.preprocess import _linear, _shrink, shrink_factors

    raw, raw_geom, hu, centre_world = _sphere_scan(direction, np.int16)
    factors = shrink_factors(raw_geom.spacing, np.array([2.0, 2.0, 2.0]), np.asarray(raw_geom.size))
    assert factors.tolist() == [3, 3, 2]
    shrunk = _shrink(raw, factors)
    assert shrunk.GetSize() == (53, 50, 35) and shrunk.GetPixelID() == sitk.sitkInt16
    # each output voxel is the (rounded) mean of its 3 x 3 x 2 bin
    bins = hu[:159, :150, :70].reshape(53, 3, 50, 3, 35, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(sitk.GetArrayFromImage(shrunk).transpose(2, 1, 0), bins, atol=0.5)
    target = raw_geom.resampled((2.0, 2.0, 2.0)).crop((6, 6, 4), (50, 46, 40))
    out = sitk.GetArrayFromImage(_linear(shrunk, target)).transpose(2, 1, 0)
    np.testing.assert_allclose(_centroid_world(out, target), centre_world, atol=0.15)
    # the sphere's excess HU over the background, integrated over the volume, is kept (no energy lost or gained)
    excess = (hu.astype(float) + 900.0).sum() * np.prod(raw_geom.spacing)
    np.testing.assert_allclose(np.clip(out + 900.0, 0, None).sum() * np.prod(target.spacing), excess, rtol=0.05)


def test_the_residual_kernel_has_exactly_the_missing_variance():
    import SimpleITK as sitk

    from pivot_monai.data.preprocess import _antialias_sigmas, _smooth_residual, residual_variance

    spacing, target, factors = np.array([0.7, 0.7, 1.25]), np.array([2.0, 2.0, 2.0]), np.array([3, 3, 2])
    variance = residual_variance(spacing, target, factors)
    box = spacing**2 * (factors**2 - 1) / 12.0  # mm**2 of the BinShrink average
    np.testing.assert_allclose(variance * (spacing * factors) ** 2 + box, _antialias_sigmas(spacing, target) ** 2)
    impulse = np.zeros((9, 9, 9), np.float32)
    impulse[4, 4, 4] = 1.0
    out = sitk.GetArrayFromImage(_smooth_residual(sitk.GetImageFromArray(impulse), variance))  # (z, y, x)
    offsets = np.arange(9) - 4.0
    for axis, v in enumerate(variance):
        profile = out.sum(axis=tuple(a for a in range(3) if a != 2 - axis))
        assert profile.sum() == pytest.approx(1.0) and (profile * offsets**2).sum() == pytest.approx(v)
    # a capped factor on a tiny axis can leave more than a three-tap kernel can hold: a sampled Gaussian then
    line = np.zeros((1, 1, 21), np.float32)
    line[0, 0, 10] = 1.0
    wide = sitk.GetArrayFromImage(_smooth_residual(sitk.GetImageFromArray(line), np.array([1.5, 0.0, 0.0])))[0, 0]
    assert wide.sum() == pytest.approx(1.0, abs=1e-5)
    assert (wide * (np.arange(21) - 10.0) ** 2).sum() == pytest.approx(1.5, rel=0.02)
    # no residual where the box already covers it, or where the axis is not downsampled
    assert residual_variance(np.array([1.5, 2.0, 2.5]), target, np.array([1, 1, 1])).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("direction", ["identity", "flip", "oblique"])
def test_gaussian_low_pass_keeps_world_positions_and_matches_one_gaussian(direction):
    import SimpleITK as sitk

    from pivot_monai.data.preprocess import (
        _antialias_sigmas,
        _linear,
        _shrink,
        _smooth_residual,
        residual_variance,
        shrink_factors,
    )

    raw, raw_geom, _, centre_world = _sphere_scan(direction, np.float32)
    target = raw_geom.resampled((2.0, 2.0, 2.0)).crop((6, 6, 4), (50, 46, 40))
    spacing = np.asarray(raw_geom.spacing)
    factors = shrink_factors(spacing, np.asarray(target.spacing))
    smooth = _smooth_residual(_shrink(raw, factors), residual_variance(spacing, np.asarray(target.spacing), factors))
    out = sitk.GetArrayFromImage(_linear(smooth, target)).transpose(2, 1, 0)
    np.testing.assert_allclose(_centroid_world(out, target), centre_world, atol=0.15)

    # the reference: one Gaussian with the whole blur on the full-resolution grid
    sigma = _antialias_sigmas(spacing, np.asarray(target.spacing))
    ref = sitk.GetArrayFromImage(_linear(sitk.SmoothingRecursiveGaussian(raw, [float(v) for v in sigma]), target))
    ref = ref.transpose(2, 1, 0)
    # close to it: the box part makes the kernel flatter-topped than one Gaussian, and interpolating from the coarser
    # shrunk grid blurs a little more; both show only at a hard edge (measured: 0.13 HU on average, up to 206 HU of
    # this 1000 HU step)
    assert np.abs(out - ref).mean() < 0.5 and np.abs(out - ref).max() < 250.0
    assert out.max() > 0.0  # the 8 mm sphere keeps its contrast
    # the residual adds its variance (mm**2) to the sphere's spread over the area low-pass alone
    area = sitk.GetArrayFromImage(_linear(_shrink(raw, factors), target)).transpose(2, 1, 0)
    added = residual_variance(spacing, np.asarray(target.spacing), factors) * (spacing * factors) ** 2
    np.testing.assert_allclose(_spread_mm2(out, target) - _spread_mm2(area, target), added, atol=0.08)


def test_antialias_is_read_from_the_data_section_and_checked():
    assert PreprocessConfig().antialias == "gaussian"
    assert PreprocessConfig.from_data_section({"antialias": "area"}).antialias == "area"
    with pytest.raises(ValueError, match=r"data.antialias must be one of \['area', 'gaussian'\], got 'box'"):
        PreprocessConfig.from_data_section({"antialias": "box"})


@pytest.mark.parametrize("antialias", ["area", "gaussian"])
@pytest.mark.parametrize("direction", ["identity", "flip", "oblique"])
def test_integer_and_float_scans_preprocess_to_the_same_image(direction, antialias, rng):
    # inference reads the stored int16: the whole-scan average is taken in int16, so the crop is the same and the
    # voxels differ by the rounding of those averages to whole HU
    import SimpleITK as sitk

    from pivot_monai.data.preprocess import preprocess_image
    from tests.conftest import _make_phantom, _nodule_in_left_lung

    rot = {"identity": np.eye(3), "flip": FLIP_Z, "oblique": oblique_direction(12.0)}[direction]
    geom = Geometry((-51.3, 20.2, -95.0), (0.7, 0.7, 1.25), rot, (150, 130, 60))
    hu = _make_phantom(geom, _nodule_in_left_lung(geom), 8.0, rng)
    raw = geom.apply_to_sitk(sitk.GetImageFromArray(hu.transpose(2, 1, 0)))
    cfg = PreprocessConfig(target_spacing=(2.0, 2.0, 2.0), crop_margin_mm=6.0, antialias=antialias)
    native = preprocess_image(raw, cfg)
    as_float = preprocess_image(sitk.Cast(raw, sitk.sitkFloat32), cfg)
    assert raw.GetPixelID() == sitk.sitkInt16 and native.lung_found
    assert native.crop_start == as_float.crop_start and native.geometry.size == as_float.geometry.size
    np.testing.assert_allclose(native.geometry.origin, as_float.geometry.origin)
    width = cfg.hu_window[1] - cfg.hu_window[0]
    np.testing.assert_allclose(native.image, as_float.image, rtol=0, atol=0.5 / width + 1e-6)
    assert np.abs(native.image - as_float.image).mean() < 0.25 / width
    assert native.image.dtype == np.float32
