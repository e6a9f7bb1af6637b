"""The bad-input catalogue of issue 23: every case a clear message (file or key, expected, got, fix), the documented
exit status, and nothing else lost. Scans, CSVs, checkpoints, output paths and config values."""

from __future__ import annotations

import errno
import json
import logging
import subprocess

import nibabel as nib
import numpy as np
import pytest
import torch

from pivot_monai.cli import main
from pivot_monai.data.annotations import AnnotationError, Nodule, read_annotations, write_annotations
from pivot_monai.data.geometry import Geometry
from pivot_monai.data.io import CTReadError, find_scans, read_ct, select_dicom_series, write_image
from pivot_monai.engines.checkpoint import CheckpointError, atomic_save, load_checkpoint, newest_valid_checkpoint
from pivot_monai.engines.validate import ConfigValueError, reject_expressions, validate_training_config
from pivot_monai.handlers.resume import resume_mode
from pivot_monai.metrics.froc import write_submission_csv
from pivot_monai.metrics.matching import ScanCandidates

GEOM = Geometry((-60.0, -50.0, -40.0), (2.0, 2.0, 2.5), np.eye(3), (48, 40, 20))


def _ct(shift: float = 0.0) -> np.ndarray:
    """(X, Y, Z) int16 HU: air, a body at 40 HU, a lung at -850 HU."""
    hu = np.full(GEOM.size, -1000.0)
    x, y, _ = np.meshgrid(*[np.linspace(-1, 1, s) for s in GEOM.size], indexing="ij")
    hu[x**2 + y**2 < 0.8] = 40.0
    hu[(x - 0.3) ** 2 + y**2 < 0.1] = -850.0
    return (hu + shift).astype(np.int16)


def _mhd(tmp_path, name="scan", array=None):
    return write_image(_ct() if array is None else array, GEOM, tmp_path / f"{name}.mhd")


def _edit_header(mhd, **fields):
    lines = []
    for line in mhd.read_text().splitlines():
        key = line.split("=")[0].strip()
        lines.append(f"{key} = {fields.pop(key)}" if key in fields else line)
    mhd.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------ scans
def _larger_payload(tmp_path):  # the header says 1 byte per voxel, the .raw holds int16
    mhd = _mhd(tmp_path)
    _edit_header(mhd, ElementType="MET_UCHAR")
    return mhd


def _trailing_bytes(tmp_path):
    mhd = _mhd(tmp_path)
    with open(mhd.with_suffix(".raw"), "ab") as f:
        f.write(b"\0" * 37)
    return mhd


def _truncated(tmp_path):
    mhd = _mhd(tmp_path)
    raw = mhd.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:1000])
    return mhd


def _missing_raw(tmp_path):
    mhd = _mhd(tmp_path)
    mhd.with_suffix(".raw").unlink()
    return mhd


def _garbage_header(tmp_path):
    mhd = tmp_path / "scan.mhd"
    mhd.write_text("this is not a header\n")
    return mhd


def _empty_mhd(tmp_path):
    mhd = tmp_path / "scan.mhd"
    mhd.write_bytes(b"")
    return mhd


def _empty_nifti(tmp_path):
    p = tmp_path / "scan.nii.gz"
    p.write_bytes(b"")
    return p


def _float_nifti(tmp_path, bad):
    hu = _ct().astype(np.float32)
    hu[3, 4, 5] = bad
    p = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([2.0, 2.0, 2.5, 1.0])), p)
    return p


def _float_mhd_nan(tmp_path):
    hu = _ct().astype(np.float32)
    hu[1, 1, 1] = np.nan
    return _mhd(tmp_path, array=hu)


def _single_slice(tmp_path):
    p = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(_ct()[:, :, :1].astype(np.int16), np.eye(4)), p)
    return p


def _shifted(tmp_path):
    return _mhd(tmp_path, array=_ct(shift=1024.0))


def _constant(tmp_path):
    return _mhd(tmp_path, array=np.full(GEOM.size, 40, np.int16))


def _normalised(tmp_path):
    return _mhd(tmp_path, array=((_ct() + 1000) / 1400.0).astype(np.float32))


def _missing_file(tmp_path):
    return tmp_path / "nope.mhd"


def _folder_without_dicom(tmp_path):
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "notes.txt").write_text("hello")
    return tmp_path / "series"


def _vector_image(tmp_path):
    import SimpleITK as sitk

    p = tmp_path / "scan.mha"
    sitk.WriteImage(sitk.Compose([sitk.GetImageFromArray(np.zeros((8, 8, 8), np.int16))] * 3), str(p))
    return p


def _swapped_dims(tmp_path):  # DimSize 20 40 48 for 48 40 20 data: the same byte count, a scrambled read
    mhd = _mhd(tmp_path)
    _edit_header(mhd, DimSize="20 40 48")
    return mhd


def _transposed_payload(tmp_path):  # the header is right, the .raw was written from a (x, y, z) C-order array
    mhd = _mhd(tmp_path)
    mhd.with_suffix(".raw").write_bytes(np.ascontiguousarray(_ct()).tobytes())
    return mhd


SCAN_CASES = {
    "mhd payload larger than the header (MET_UCHAR)": (_larger_payload, "ElementType wrong"),
    "mhd payload with trailing bytes": (_trailing_bytes, "holds 76837 bytes"),
    "mhd payload truncated": (_truncated, "truncated"),
    "mhd data file missing": (_missing_raw, "missing"),
    "mhd header garbage": (_garbage_header, "unreadable image"),
    "mhd header empty (0 bytes)": (_empty_mhd, "unreadable image"),
    "nifti empty (0 bytes)": (_empty_nifti, "unreadable image"),
    "float nifti with NaN": (lambda t: _float_nifti(t, np.nan), "1 voxel(s) are NaN or infinite"),
    "float nifti with Inf": (lambda t: _float_nifti(t, np.inf), "1 voxel(s) are NaN or infinite"),
    "float mhd with NaN": (_float_mhd_nan, "NaN or infinite"),
    "a single slice": (_single_slice, "expected a 3D CT volume"),
    "CT shifted by +1024 (no rescale intercept)": (_shifted, "rescale intercept"),
    "a constant volume": (_constant, "do not look like CT"),
    "values normalised to 0..1": (_normalised, "do not look like CT"),
    "scan file missing": (_missing_file, "file not found"),
    "folder without DICOM": (_folder_without_dicom, "holds no DICOM series"),
    "a 3-component image": (_vector_image, "scalar CT image"),
    "mhd DimSize axes swapped (same byte count)": (_swapped_dims, "not laid out as the header's DimSize [20, 40, 48]"),
    "mhd payload written in another axis order": (_transposed_payload, "axes swapped, or was the array written"),
}


@pytest.mark.parametrize("case", sorted(SCAN_CASES))
def test_bad_scan_is_a_ct_read_error_naming_the_file(tmp_path, case):
    make, expected = SCAN_CASES[case]
    path = make(tmp_path)
    with pytest.raises(CTReadError) as exc:
        read_ct(path)
    message = str(exc.value)
    assert str(path) in message and expected in message, message
    assert "\n" not in message


def test_the_good_mhd_still_reads(tmp_path):
    assert read_ct(_mhd(tmp_path)).array.shape == GEOM.size


# ------------------------------------------------------------------------------------------------ DICOM
def _dicom_series(folder, uid, n, suffix=".dcm", modality="CT"):
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    vol = sitk.GetImageFromArray(np.transpose(_ct()[:16, :16, :n], (2, 1, 0)).copy())
    vol.SetSpacing((2.0, 2.0, 2.5))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i in range(n):
        s = vol[:, :, i]
        pos = "\\".join(str(v) for v in vol.TransformIndexToPhysicalPoint((0, 0, i)))
        for key, value in (("0008|0060", modality), ("0020|000e", uid), ("0020|0013", str(i + 1)), ("0020|0032", pos)):
            s.SetMetaData(key, value)
        s.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        name = folder / f"{uid.rsplit('.', 1)[-1]}_{i:03d}.dcm"
        writer.SetFileName(str(name))
        writer.Execute(s)
        if suffix != ".dcm":
            name.rename(name.with_name(name.stem + suffix))


def test_a_folder_with_two_series_reads_the_larger_ct_series_and_says_so(tmp_path, caplog):
    _dicom_series(tmp_path / "d", "1.2.840.9.111", 3)
    _dicom_series(tmp_path / "d", "1.2.840.9.222", 6)
    with caplog.at_level(logging.WARNING):
        volume = read_ct(tmp_path / "d")
    assert volume.array.shape[2] == 6
    assert "holds 2 DICOM series" in caplog.text and "using 1.2.840.9.222" in caplog.text


def test_dicom_slices_without_a_suffix_are_found_by_content(tmp_path):
    _dicom_series(tmp_path / "raw" / "case1", "1.2.840.9.333", 4, suffix="")
    assert find_scans(tmp_path / "raw") == [tmp_path / "raw" / "case1"]
    assert read_ct(tmp_path / "raw" / "case1").array.shape[2] == 4


def test_an_unknown_series_uid_lists_the_series_there(tmp_path):
    _dicom_series(tmp_path / "d", "1.2.840.9.444", 3)
    with pytest.raises(CTReadError, match="no DICOM series 1.2.3; the folder holds 1.2.840.9.444"):
        select_dicom_series(tmp_path / "d", "1.2.3")


# ------------------------------------------------------------------------------------------------ annotations
HEADER = "seriesuid,coordX,coordY,coordZ,diameter_mm,malignancy\n"
ANNOTATION_CASES = {
    "diameter not a number": ("1.2,1,2,3,abc,3\n", "annotations.csv:3: column 'diameter_mm' must be a number"),
    "negative diameter": ("1.2,1,2,3,-4,3\n", "diameter_mm must be a positive number"),
    "NaN coordinate": ("1.2,nan,2,3,6,3\n", "non-finite coordinates"),
    "empty seriesuid": (",1,2,3,6,3\n", "empty seriesuid"),
    "malignancy 7": ("1.2,1,2,3,6,7\n", "malignancy must be an LIDC rating in 1..5"),
}


@pytest.mark.parametrize("case", sorted(ANNOTATION_CASES))
def test_bad_annotation_row_names_file_and_line(tmp_path, case):
    row, expected = ANNOTATION_CASES[case]
    path = tmp_path / "annotations.csv"
    path.write_text(HEADER + "1.1,0,0,0,5,2\n" + row)
    with pytest.raises(AnnotationError) as exc:
        read_annotations(path)
    assert expected in str(exc.value) and "annotations.csv:3" in str(exc.value), str(exc.value)


def test_missing_columns_show_what_was_found(tmp_path):
    path = tmp_path / "annotations.csv"
    path.write_text("seriesuid;coordX;coordY;coordZ;diameter_mm\n1.2;1;2;3;6\n")  # semicolons
    with pytest.raises(AnnotationError, match=r"missing column\(s\).*expected header seriesuid,coordX"):
        read_annotations(path)


def test_a_missing_annotation_file_says_which_columns_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file not found.*seriesuid, coordX"):
        read_annotations(tmp_path / "annotations.csv")


def test_duplicated_rows_are_removed_with_a_warning(tmp_path, caplog):
    path = tmp_path / "annotations.csv"
    path.write_text(HEADER + "1.2,1,2,3,6,3\n1.2,1,2,3,6,3\n1.2,9,9,9,6,3\n")
    with caplog.at_level(logging.WARNING):
        nodules = read_annotations(path)
    assert len(nodules["1.2"]) == 2 and "1 duplicated row(s) removed (line 3 = line 2)" in caplog.text


def test_an_implausible_diameter_is_capped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "annotations.csv"
    path.write_text(HEADER + "1.2,1,2,3,500,3\n")
    with caplog.at_level(logging.WARNING):
        nodules = read_annotations(path)
    assert nodules["1.2"][0].diameter_mm == 60.0 and "above the plausible 60 mm capped" in caplog.text


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "annotations.csv"
    path.write_bytes(("\ufeff" + HEADER + "1.2,1,2,3,6,3\n").encode("utf-8"))
    assert list(read_annotations(path)) == ["1.2"]


# ------------------------------------------------------------------------------------------------ pivot preprocess
def _raw_dataset(root, shifted: bool = False, extra_rows: str = ""):
    centre = GEOM.index_to_world(np.array([30.0, 20.0, 10.0]))
    for uid in ("1.5.good", "1.5.bad"):
        write_image(_ct(1024.0 if shifted and uid == "1.5.bad" else 0.0), GEOM, root / "subset0" / f"{uid}.mhd")
    write_annotations(root / "annotations.csv", [Nodule("1.5.good", tuple(centre), 8.0, 4.0)])
    if extra_rows:
        with open(root / "annotations.csv", "a") as f:
            f.write(extra_rows)
    return centre


def _preprocess(root, out):
    return main(["preprocess", "--input-dir", str(root), "--output-dir", str(out)])


def test_preprocess_reports_a_shifted_scan_exits_1_and_processes_the_others(tmp_path):
    _raw_dataset(tmp_path / "raw", shifted=True)
    assert _preprocess(tmp_path / "raw", tmp_path / "out") == 1
    report = json.loads((tmp_path / "out" / "preprocess_report.json").read_text())
    assert report["ok"] == ["1.5.good"] and (tmp_path / "out" / "1.5.good" / "meta.json").exists()
    assert "rescale intercept" in report["failed"][0]["error"] and not (tmp_path / "out" / "1.5.bad").exists()


def test_preprocess_warns_about_unknown_uids_with_a_count_and_dedups_rows(tmp_path, caplog):
    centre = _raw_dataset(tmp_path / "raw")
    row = f"1.5.good,{centre[0]:.4f},{centre[1]:.4f},{centre[2]:.4f},8.0000,4\n"
    with open(tmp_path / "raw" / "annotations.csv", "a") as f:
        f.write(row + "9.9.nowhere,1,2,3,5,2\n9.9.elsewhere,1,2,3,5,2\n")
    with caplog.at_level(logging.WARNING):
        assert _preprocess(tmp_path / "raw", tmp_path / "out") == 0
    assert "2 annotated seriesuid(s) have no scan" in caplog.text and "9.9.elsewhere" in caplog.text
    assert "duplicated row(s) removed" in caplog.text
    assert len(json.loads((tmp_path / "out" / "1.5.good" / "meta.json").read_text())["nodules"]) == 1


# ------------------------------------------------------------------------------------------------ checkpoints
def _checkpoint(tmp_path, name="checkpoint_epoch=1.pt"):
    return atomic_save({"model": {"w": torch.zeros(2)}, "trainer": {"iteration": 2}}, tmp_path / name)


CHECKPOINT_CASES = {
    "0-byte checkpoint": (lambda p: p.write_bytes(b""), "empty (0 bytes"),
    "truncated checkpoint": (lambda p: p.write_bytes(_checkpoint(p.parent, "x.pt").read_bytes()[:300]), "unreadable"),
    "text instead of a checkpoint": (lambda p: p.write_text("hello"), "unreadable"),
    "weights-only model.pt as a checkpoint": (lambda p: torch.save({"w": torch.zeros(1)}, p), "not a training"),
    "a pickled object": (lambda p: torch.save({"model": object(), "trainer": {}}, p), "not a PIVOT training"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_bad_checkpoint_is_a_one_line_error_without_unsafe_advice(tmp_path, case):
    make, expected = CHECKPOINT_CASES[case]
    path = tmp_path / "checkpoint_epoch=2.pt"
    make(path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    message = str(exc.value)
    assert expected in message and str(path) in message and "weights_only=False" not in message, message
    assert "\n" not in message


def test_a_missing_resume_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="checkpointing.resume: .*nope.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_a_truncated_newest_checkpoint_falls_back_with_a_message(tmp_path, caplog):
    _checkpoint(tmp_path)
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(_checkpoint(tmp_path, "x.pt").read_bytes()[:200])
    with caplog.at_level(logging.WARNING):
        entry, _ = newest_valid_checkpoint(tmp_path)
    assert entry.path.name == "checkpoint_epoch=1.pt" and "falling back to checkpoint_epoch=1.pt" in caplog.text


def test_a_resume_value_of_the_wrong_type_names_the_key():
    with pytest.raises(TypeError, match="checkpointing.resume must be auto, true, false or a checkpoint path, got 3"):
        resume_mode(3)


# ------------------------------------------------------------------------------------------------ output paths
def _candidates():
    return {"1.2": ScanCandidates(np.zeros((2, 3)), np.array([0.9, 0.1]))}


def test_candidates_under_a_file_is_an_os_error_naming_it(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OSError) as exc:
        write_submission_csv(tmp_path / "afile" / "candidates.csv", _candidates())
    assert exc.value.errno == errno.ENOTDIR and "afile/candidates.csv" in str(exc.value)


@pytest.fixture
def read_only(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    (mount / "candidates.csv").write_text("old\n")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if res.returncode:
        pytest.skip("cannot mount a tmpfs here")
    (mount / "candidates.csv").write_text("old\n")
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_read_only_filesystem_is_an_os_error_and_the_old_file_stays(read_only):
    with pytest.raises(OSError) as exc:
        write_submission_csv(read_only / "candidates.csv", _candidates())
    assert exc.value.errno == errno.EROFS and "candidates.csv" in str(exc.value)
    assert (read_only / "candidates.csv").read_text() == "old\n"


# ------------------------------------------------------------------------------------------------ config values
CONFIG_CASES = {
    "epochs as a word": ({"training": {"epochs": "ten"}}, "training.epochs must be an integer >= 1, got 'ten'"),
    "epochs 0": ({"training": {"epochs": 0}}, "training.epochs must be an integer >= 1, got 0"),
    "epochs -3": ({"training": {"epochs": -3}}, "got -3"),
    "epochs 2.5": ({"training": {"epochs": 2.5}}, "got 2.5 (float)"),
    "batch 0": ({"training": {"batch_size": 0}}, "training.batch_size must be an integer >= 1"),
    "learning rate as a string": ({"training": {"learning_rate": "1e-3"}}, "write 1.0e-3"),
    "optimizer lion": ({"training": {"optimizer": {"type": "lion"}}}, "training.optimizer.type must be one of"),
    "scheduler unknown": ({"training": {"scheduler": {"type": "poly"}}}, "training.scheduler.type must be one of"),
    "patch 18 not divisible": ({"data": {"patch_size": [18, 64, 64]}}, "divisible by 2 ** model.depth = 16"),
    "scalar patch": ({"data": {"patch_size": 64}}, "data.patch_size must be 3 positive integers"),
    "activation swish": ({"model": {"activation": "swish"}}, "model.activation must be one of"),
    "output stride 3": ({"model": {"output_stride": 3}}, "model.output_stride must be one of [1, 2, 4]"),
    "output stride too deep": ({"model": {"output_stride": 4, "depth": 2}}, "smaller than 2 ** model.depth = 4"),
    "dropout 1.5": ({"model": {"dropout": 1.5}}, "model.dropout must be a number in [0, 1)"),
    "depth 9": ({"model": {"depth": 9}}, "model.depth must be an integer >= 1 and <= 6"),
    "negative save interval": ({"checkpointing": {"save_interval": -1}}, "checkpointing.save_interval must be"),
    "positive sampling unknown": ({"data": {"positive_sampling": "nodule"}}, "data.positive_sampling must be one of"),
    "contrast reference 0": ({"data": {"positive_contrast_hu": 0}}, "data.positive_contrast_hu must be a number of HU"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_value_names_key_expected_and_got(case):
    config, expected = CONFIG_CASES[case]
    base = {"model": {"depth": 4}, "training": {"epochs": 10}}
    merged = {**base, **{k: {**base.get(k, {}), **v} for k, v in config.items()}}
    with pytest.raises(ConfigValueError) as exc:
        validate_training_config(merged)
    assert expected in str(exc.value), str(exc.value)


def test_warmup_not_below_epochs_is_a_warning_not_silence(caplog):
    with caplog.at_level(logging.WARNING):
        validate_training_config({"training": {"epochs": 2, "scheduler": {"type": "cosine", "warmup_epochs": 5}}})
    assert "warmup_epochs (5) is not smaller than training.epochs (2)" in caplog.text


def test_expressions_are_refused_in_client_configs():
    with pytest.raises(ConfigValueError, match=r"api: training.epochs holds the expression"):
        reject_expressions({"training": {"epochs": "$__import__('os').system('true')"}}, "api")
    reject_expressions({"training": {"epochs": 3, "name": "a $ in the middle is fine"}})


def test_the_bundle_defaults_and_profiles_pass():
    from monai.bundle import ConfigParser

    from tests.conftest import REPO_ROOT

    configs = REPO_ROOT / "bundle" / "configs"
    for extra in (
        [],
        ["demo.yaml"],
        ["demo.yaml", "demo_fast.yaml"],
        ["features_example.yaml"],
        ["multi_gpu_train.yaml"],
    ):
        parser = ConfigParser()
        parser.read_config([str(configs / "train.yaml"), *(str(configs / e) for e in extra)])
        validate_training_config(parser.get())


# ------------------------------------------------------------------------------------------------ patch vs image
def test_a_crop_larger_than_the_volume_is_padded_with_one_warning(caplog):
    from pivot_monai.transforms.sampling import NoduleCropSamplerd

    label = np.zeros((1, 10, 12, 8), np.int16)
    label[0, 4:6, 5:7, 3:5] = 1
    data = {"image": torch.zeros((1, 10, 12, 8)), "label": torch.as_tensor(label), "seriesuid": "1.2.small"}
    sampler = NoduleCropSamplerd(["image", "label"], spatial_size=(16, 16, 16), num_samples=2, pos=1, neg=1)
    sampler.set_random_state(0)
    with caplog.at_level(logging.WARNING):
        crops = sampler(data) + sampler(data)
    assert all(tuple(c["image"].shape) == (1, 16, 16, 16) for c in crops)
    warnings = [r for r in caplog.records if "is larger than a training volume" in r.getMessage()]
    assert len(warnings) == 1 and "[16, 16, 16]" in warnings[0].getMessage() and "1.2.small" in warnings[0].getMessage()


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "checkpoint is empty (0 bytes"),
        (None, "holds objects other than tensors"),
        (b"PK\x03\x04", "not a readable"),
    ],
)
def test_pivot_infer_with_a_bad_model_exits_2_with_one_line(tmp_path, caplog, content, expected):
    model = tmp_path / "model.pt"
    if content is None:
        torch.save({"net": object()}, model)
    else:
        model.write_bytes(content)
    scan = _mhd(tmp_path)
    with caplog.at_level(logging.ERROR):
        code = main(["infer", "--checkpoint", str(model), "--input", str(scan), "--output", str(tmp_path / "out")])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert code == 2 and len(errors) == 1 and expected in errors[0] and str(model) in errors[0], errors
    assert "weights_only=False" not in errors[0] and not (tmp_path / "out" / "candidates.csv").exists()


# ------------------------------------------------------------------------------------------------ memory
def test_a_patch_too_large_for_the_machine_is_refused_before_training(monkeypatch):
    from pivot_monai.config import load_config
    from pivot_monai.engines import memory

    monkeypatch.setattr(memory, "available_memory", lambda device_type="cpu": (24 * 2**30, "RAM"))
    config = load_config(None)
    config["data"]["patch_size"] = [256, 256, 256]  # the case: ~70^3 images, killed at 24 GB
    with pytest.raises(ConfigValueError) as exc:
        memory.check_training_memory(config)
    message = str(exc.value)
    assert "cannot fit" in message and "data.patch_size [256, 256, 256]" in message
    assert "training.batch_size" in message and "RAM has 24.0 GiB available" in message and "\n" not in message


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (["--data#patch_size", "[512, 512, 512]", "--training#batch_size", "8"], "data.patch_size [512, 512, 512]"),
        # the training step fits; the whole-volume window of validation and mining does not
        (["--inference#roi_size", "[1024, 1024, 1024]"], "inference.roi_size [1024, 1024, 1024]"),
    ],
    ids=["training-step", "validation-window"],
)
def test_the_bundle_command_refuses_a_step_that_cannot_fit_before_building_anything(tmp_path, override, named):
    import sys

    from tests.conftest import REPO_ROOT

    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "bundle/configs/train.yaml"]
    args += ["--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "no-data"), "--device#type", "cpu"]
    res = subprocess.run(args + override, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "cannot fit" in out and named in out, out[-2000:]
    assert "Traceback" not in out and not (tmp_path / "models").exists()  # refused before the trainer was built


def test_a_flag_or_number_of_the_wrong_kind_names_its_key_and_the_command_line_spelling():
    from pivot_monai.engines.validate import check_literal_types

    defaults = {"device": {"reuse_freed_memory": True, "num_threads": None}, "data": {"crop_margin": 10}}
    with pytest.raises(ConfigValueError) as exc:
        check_literal_types({"device": {"reuse_freed_memory": "false"}}, defaults)
    assert "device.reuse_freed_memory must be true or false, got 'false' (str)" in str(exc.value)
    assert "--device#reuse_freed_memory True (or False)" in str(exc.value)
    with pytest.raises(ConfigValueError, match=r"data.crop_margin must be a number, got '6' \(str\)"):
        check_literal_types({"data": {"crop_margin": "6"}}, defaults)
    with pytest.raises(ConfigValueError, match=r"data.crop_margin must be a number, got True"):
        check_literal_types({"data": {"crop_margin": True}}, defaults)
    # expressions, a null default, floats for int defaults and null values say nothing against the kind
    check_literal_types(
        {"device": {"reuse_freed_memory": "$True", "num_threads": "2"}, "data": {"crop_margin": 6.5}}, defaults
    )
    check_literal_types({"data": {"crop_margin": None}}, defaults)


def test_the_bundle_command_refuses_lower_case_false_that_would_leave_a_flag_on(tmp_path):
    """Python Fire reads ``false`` as the text 'false', which is truthy: the flag stayed on and a run got OOM-killed."""
    import sys

    from tests.conftest import REPO_ROOT

    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "bundle/configs/train.yaml"]
    args += ["--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "no-data"), "--device#type", "cpu"]
    res = subprocess.run(
        args + ["--device#reuse_freed_memory", "false"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    out = res.stdout + res.stderr
    (line,) = [ln for ln in out.splitlines() if " ERROR " in ln]
    assert res.returncode == 1 and "device.reuse_freed_memory must be true or false, got 'false'" in line, out[-2000:]
    assert "Traceback" not in out and not (tmp_path / "models").exists()


def test_a_yaml_syntax_error_in_the_config_is_one_line_with_its_position(tmp_path, caplog):
    config = tmp_path / "my.yaml"
    config.write_text("training:\n  epochs: [1\n")
    with caplog.at_level(logging.ERROR):
        code = main(["train", "--config", str(config)])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert code == 2 and len(errors) == 1, errors
    assert f"{config}: not valid YAML at line 3" in errors[0] and "starts at line 2, column 11" in errors[0]
    assert "\n" not in errors[0]


# ------------------------------------------------------------------------------------------------ preprocessing
def test_scans_made_with_another_spacing_are_named_in_a_warning(tmp_path, caplog):
    from pivot_monai.engines.validate import check_preprocessing

    items = []
    for name, spacing in (("a", [1.25, 1.25, 1.25]), ("b", [1.5, 1.5, 1.5]), ("c", None)):
        (tmp_path / name).mkdir()
        made = {} if spacing is None else {"preprocess_config": {"target_spacing": spacing, "hu_window": [-1000, 400]}}
        (tmp_path / name / "meta.json").write_text(json.dumps(made))
        items.append({"meta": str(tmp_path / name / "meta.json")})
    with caplog.at_level(logging.WARNING):
        lines = check_preprocessing({"target_spacing": [1.5, 1.5, 1.5], "hu_window": [-1000, 400]}, items)
    # scan a differs, b matches, c records nothing to compare
    assert lines == [f"{tmp_path / 'a'}: made with data.target_spacing [1.25, 1.25, 1.25] (config: [1.5, 1.5, 1.5])"]
    assert "1 processed scan(s) were made with other preprocessing" in caplog.text and "--overwrite" in caplog.text
    caplog.clear()
    assert check_preprocessing({"target_spacing": [1.25, 1.25, 1.25]}, items[:1]) == [] and not caplog.text
