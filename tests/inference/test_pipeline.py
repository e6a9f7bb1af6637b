from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from pivot_monai.cli import main as pivot_main
from pivot_monai.data.geometry import Geometry
from pivot_monai.data.io import read_sitk, write_image
from pivot_monai.inference.pipeline import infer_scans, scan_datalist
from pivot_monai.metrics import SUBMISSION_COLUMNS, read_submission_csv
from tests.conftest import REPO_ROOT, _make_phantom, _nodule_in_left_lung
from tests.data.test_io import _write_dicom_series
from tests.inference.conftest import TINY_DATA, TINY_INFERENCE, TINY_MODEL, OracleNet, tiny_settings, tricky_geometries

HEADER = [*SUBMISSION_COLUMNS, "diameter_mm", "malignancy_probability"]


def _infer_oracle(root, out, model, **kwargs):
    outputs = {k: kwargs.pop(k) for k in list(kwargs) if k in ("save_heatmap", "save_previews", "num_previews")}
    return infer_scans([root], out, model, tiny_settings(**kwargs), **outputs)


@pytest.mark.parametrize("stride", [1, 2])
def test_candidates_land_on_true_nodule_centres_in_world_mm(make_raw_dataset, stride, tmp_path):
    # measured 0.06-0.28 mm (stride 1) and 0.29-0.38 mm (stride 2: heads at 3 mm here); mapping coarse voxels to the
    # corner instead of the centre of their 2^3 block (a 0.75 mm shift per axis) gives 1.5 mm
    root, truth = make_raw_dataset(tricky_geometries())
    report = _infer_oracle(root, tmp_path / "out", OracleNet(stride=stride).eval())
    assert sorted(report["ok"]) == sorted(truth) and not report["failed"]
    cands = read_submission_csv(tmp_path / "out" / "candidates.csv")
    for uid, (_, centre, _) in truth.items():
        top = cands[uid].world[np.argmax(cands[uid].probability)]
        assert np.linalg.norm(top - centre) <= 1.0, (uid, top, centre)
        assert cands[uid].probability.max() > 0.5


def test_torchscript_oracle_gives_the_same_candidates_as_eager(make_raw_dataset, oracle, tmp_path):
    root, _ = make_raw_dataset(dict(list(tricky_geometries().items())[1:2]))
    ts_path = tmp_path / "oracle.ts"
    torch.jit.save(torch.jit.script(oracle), str(ts_path))
    _infer_oracle(root, tmp_path / "eager", oracle)
    _infer_oracle(root, tmp_path / "ts", ts_path)
    eager, ts = (read_submission_csv(tmp_path / d / "candidates.csv") for d in ("eager", "ts"))
    assert eager.keys() == ts.keys()
    for uid in eager:
        np.testing.assert_allclose(ts[uid].world, eager[uid].world, atol=1e-5)
        np.testing.assert_allclose(ts[uid].probability, eager[uid].probability, atol=1e-6)


def test_csv_has_the_luna16_header_and_at_most_max_candidates_per_scan(make_raw_dataset, tiny_checkpoint, tmp_path):
    root, truth = make_raw_dataset(dict(list(tricky_geometries().items())[:2]))
    infer_scans(
        root,
        tmp_path / "out",
        tiny_checkpoint,
        tiny_settings(model=TINY_MODEL, inference={**TINY_INFERENCE, "score_threshold": 0.0, "max_candidates": 7}),
    )
    path = tmp_path / "out" / "candidates.csv"
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == HEADER
    assert all(len(r) == len(HEADER) for r in rows[1:])
    counts = {uid: sum(r[0] == uid for r in rows[1:]) for uid in truth}
    assert counts == {uid: 7 for uid in truth}
    cands = read_submission_csv(path)
    for scan in cands.values():
        assert np.all((scan.probability >= 0) & (scan.probability <= 1))
        assert np.all(np.diff(scan.probability) <= 0)  # sorted by probability
        assert np.all((scan.malignancy >= 0) & (scan.malignancy <= 1)) and np.all(scan.diameter_mm >= 0)


def _write_bad_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    garbage = folder / "garbage.nii.gz"
    garbage.write_bytes(b"this is not an image" * 50)
    flat = folder / "flat2d.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.int16) - 1000), str(flat))
    probability = folder / "probability.nii.gz"
    write_image(
        np.random.default_rng(0).random((20, 20, 12)).astype(np.float32),
        Geometry((0, 0, 0), (1, 1, 1), np.eye(3), (20, 20, 12)),
        probability,
    )
    return {"garbage": garbage, "flat2d": flat, "probability": probability}


def test_bad_inputs_fail_alone_and_exit_1(make_raw_dataset, tiny_checkpoint, tiny_config, tmp_path, caplog):
    root, truth = make_raw_dataset(dict(list(tricky_geometries().items())[:1]))
    bad = _write_bad_inputs(root / "bad")
    out = tmp_path / "out"
    argv = [
        "--checkpoint",
        str(tiny_checkpoint),
        "--input",
        str(root),
        "--output",
        str(out),
        "--config",
        str(tiny_config(score_threshold=0.0)),
        "--device",
        "cpu",
    ]
    with caplog.at_level(logging.ERROR):
        assert pivot_main(["infer", *argv]) == 1
    report = json.loads((out / "infer_report.json").read_text())
    assert report["ok"] == list(truth)
    failed = {f["seriesuid"]: f for f in report["failed"]}
    assert sorted(failed) == sorted(bad)
    for uid, path in bad.items():
        assert str(path) in failed[uid]["error"] and str(path) in caplog.text
    assert "3D" in failed["flat2d"]["error"] and "Hounsfield" in failed["probability"]["error"]
    assert set(read_submission_csv(out / "candidates.csv")) == set(truth)


def test_missing_input_or_checkpoint_exit_2(make_raw_dataset, tiny_checkpoint, tmp_path):
    root, _ = make_raw_dataset(dict(list(tricky_geometries().items())[:1]))
    out = str(tmp_path / "out")
    assert (
        pivot_main(["infer", "--checkpoint", str(tiny_checkpoint), "--input", str(tmp_path / "nope"), "--output", out])
        == 2
    )
    assert pivot_main(["infer", "--checkpoint", str(tmp_path / "nope.pt"), "--input", str(root), "--output", out]) == 2
    with pytest.raises(SystemExit) as exc:  # argparse: neither --checkpoint nor --model
        pivot_main(["infer", "--input", str(root), "--output", out])
    assert exc.value.code == 2


@pytest.mark.parametrize("stride", [1, 2])
def test_heatmap_is_written_on_the_raw_grid_and_peaks_at_the_nodule(make_raw_dataset, stride, tmp_path):
    root, truth = make_raw_dataset(dict(list(tricky_geometries().items())[1:2]))
    _infer_oracle(root, tmp_path / "out", OracleNet(stride=stride).eval(), save_heatmap=True)
    ((uid, (geom, centre, _)),) = truth.items()
    heat = sitk.ReadImage(str(tmp_path / "out" / f"{uid}_heatmap.nii.gz"))
    raw = Geometry.from_sitk(read_sitk(root / "subset0" / f"{uid}.mhd"))
    hg = Geometry.from_sitk(heat)
    assert hg.size == raw.size
    np.testing.assert_allclose(hg.origin, raw.origin, atol=1e-3)
    np.testing.assert_allclose(hg.direction, raw.direction, atol=1e-6)
    np.testing.assert_allclose(hg.spacing, raw.spacing, atol=1e-5)
    arr = sitk.GetArrayFromImage(heat).transpose(2, 1, 0)
    peak = np.unravel_index(np.argmax(arr), arr.shape)
    assert np.linalg.norm(hg.index_to_world(np.asarray(peak)) - centre) <= np.linalg.norm(raw.spacing)


def test_previews_are_written_for_the_top_candidates(make_raw_dataset, oracle, tmp_path):
    root, truth = make_raw_dataset(dict(list(tricky_geometries().items())[:1]))
    report = _infer_oracle(root, tmp_path / "out", oracle, save_previews=True, num_previews=2)
    (uid,) = truth
    files = sorted((tmp_path / "out" / "previews").glob("*.png"))
    assert [f.name for f in files] == [f"{uid}_{r}.png" for r in range(1, min(2, report["n_candidates"][uid]) + 1)]
    assert files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_raw_scan_is_kept_only_when_an_output_needs_it(make_raw_dataset, oracle):
    from pivot_monai.inference.pipeline import InferencePipeline
    from pivot_monai.inference.predictor import Predictor

    root, truth = make_raw_dataset(dict(list(tricky_geometries().items())[:1]))
    (uid,) = truth
    path = root / "subset0" / f"{uid}.mhd"
    predictor = Predictor(oracle, TINY_DATA["patch_size"])
    plain = InferencePipeline(predictor, tiny_settings()).predict(path)
    assert plain.raw is None and len(plain.candidates) > 0  # released before the network: its memory is reused
    kept = InferencePipeline(predictor, tiny_settings(), save_heatmap=True).predict(path)
    assert isinstance(kept.raw, sitk.Image) and kept.raw.GetSize() == read_sitk(path).GetSize()
    assert InferencePipeline(predictor, tiny_settings()).predict(path, keep_raw=True).raw is not None
    np.testing.assert_allclose(kept.candidates.world, plain.candidates.world)


def test_scan_datalist_expands_folders_and_skips_duplicate_uids(make_raw_dataset):
    root, truth = make_raw_dataset(dict(list(tricky_geometries().items())[:2]))
    items = scan_datalist([root, root / "subset0" / f"{next(iter(truth))}.mhd"])
    assert sorted(i["seriesuid"] for i in items) == sorted(truth)


def _bundle_sections() -> tuple[dict, dict]:
    train = yaml.safe_load((REPO_ROOT / "bundle/configs/train.yaml").read_text())
    infer = yaml.safe_load((REPO_ROOT / "bundle/configs/inference.yaml").read_text())
    return train, infer


def test_inference_yaml_is_layered_over_train_yaml_and_repeats_none_of_its_sections():
    train, infer = _bundle_sections()
    for section in ("data", "model", "inference", "device"):  # network_def: inference.yaml's is the checkpoint's
        assert section in train and section not in infer, section


INFERENCE_BUNDLE = [str(REPO_ROOT / "bundle/configs/train.yaml"), str(REPO_ROOT / "bundle/configs/inference.yaml")]


def test_inference_yaml_has_the_monai_infer_properties(make_raw_dataset, tiny_checkpoint, tmp_path):
    from monai.bundle import ConfigWorkflow

    root, _ = make_raw_dataset(dict(list(tricky_geometries().items())[:1]))
    workflow = ConfigWorkflow(
        config_file=INFERENCE_BUNDLE,
        workflow_type="infer",
        input=str(root),
        output=str(tmp_path / "out"),
        checkpoint=str(tiny_checkpoint),
        **{"model#base_filters": 4, "model#depth": 2},
    )
    workflow.initialize()
    assert workflow.check_properties() == []


def test_monai_bundle_run_inference_yaml_writes_candidates(make_raw_dataset, tiny_checkpoint, tmp_path):
    root, truth = make_raw_dataset(dict(list(tricky_geometries().items())[:1]))
    out = tmp_path / "bundle_out"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "['bundle/configs/train.yaml','bundle/configs/inference.yaml']",
        "--input",
        str(root),
        "--output",
        str(out),
        "--checkpoint",
        str(tiny_checkpoint),
        "--model#base_filters",
        "4",
        "--model#depth",
        "2",
        "--data#patch_size",
        "[32,32,32]",
        "--inference#score_threshold",
        "0.0",
        "--device#type",
        "cpu",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (out / "candidates.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == HEADER and {r[0] for r in rows[1:]} == set(truth)
    assert json.loads((out / "infer_report.json").read_text())["ok"] == list(truth)


def test_nifti_and_dicom_inputs_give_the_same_world_centres(oracle, rng, tmp_path):
    geom = tricky_geometries()["1.3.6.aniso"]
    centre = _nodule_in_left_lung(geom)
    hu = _make_phantom(geom, centre, 8.0, rng)
    write_image(hu, geom, tmp_path / "in" / "scan_nifti.nii.gz")
    _write_dicom_series(tmp_path / "in" / "scan_dicom", hu, geom)
    report = _infer_oracle(tmp_path / "in", tmp_path / "out", oracle)
    assert sorted(report["ok"]) == ["scan_dicom", "scan_nifti"] and not report["failed"]
    for uid, scan in read_submission_csv(tmp_path / "out" / "candidates.csv").items():
        assert np.linalg.norm(scan.world[0] - centre) <= 1.5, uid


def test_a_broken_checkpoint_stops_the_run_instead_of_failing_each_scan(make_raw_dataset, tmp_path):
    # a model that cannot load ends the run: it is not one scan's failure
    root, _ = make_raw_dataset(dict(list(tricky_geometries().items())[:2]))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"broken\.pt: not a readable PyTorch checkpoint"):
        infer_scans([root], tmp_path / "out", broken, tiny_settings(model=TINY_MODEL))
    assert not (tmp_path / "out" / "candidates.csv").exists()
