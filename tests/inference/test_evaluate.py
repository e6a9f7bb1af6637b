from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from pivot_monai.cli import main as pivot_main
from pivot_monai.data.annotations import Nodule
from pivot_monai.data.geometry import Geometry
from pivot_monai.data.io import write_image
from pivot_monai.data.preprocess import PreprocessConfig, nodule_label_volume
from pivot_monai.data.raw_dataset import preprocess_dataset
from pivot_monai.inference.evaluate import PER_NODULE_COLUMNS, discover_cases, evaluate, scan_detection_dice
from pivot_monai.metrics import ScanCandidates, compute_froc
from tests.conftest import FLIP_Z, REPO_ROOT
from tests.inference.conftest import TINY_DATA, tiny_settings, tricky_geometries

METRIC_KEYS = {
    "cpm",
    "sensitivity@0.125",
    "sensitivity@1",
    "sensitivity@8",
    "cpm_ci",
    "sensitivity_ci",
    "detection_dice",
    "center_accuracy",
    "size_mae_mm",
    "malignancy_auc",
    "n_scans",
    "n_nodules",
    "fp_per_scan",
    "failed",
    "n_failed",
}


@pytest.fixture
def processed_split(make_raw_dataset, tmp_path):
    root, truth = make_raw_dataset(tricky_geometries())
    out = tmp_path / "processed" / "test"
    cfg = PreprocessConfig.from_data_section(TINY_DATA)
    assert not preprocess_dataset(root, out, cfg)["failed"]
    return root, out, truth


def test_detection_dice_of_hand_placed_spheres(tmp_path):
    geom = Geometry((10.0, -5.0, 30.0), (1.5, 1.5, 1.5), FLIP_Z, (30, 30, 30))
    nodule = Nodule("s", tuple(geom.index_to_world(np.array([15.0, 12.0, 14.0]))), 9.0)
    write_image(nodule_label_volume(geom, [nodule]), geom, tmp_path / "label.nii.gz")
    exact = ScanCandidates([nodule.world], [0.9], [9.0])
    assert scan_detection_dice(tmp_path / "label.nii.gz", exact) == pytest.approx(1.0, abs=0.02)
    far = ScanCandidates([np.asarray(nodule.world) + 20.0], [0.9], [9.0])
    assert scan_detection_dice(tmp_path / "label.nii.gz", far) == 0.0
    below = ScanCandidates([nodule.world], [0.4], [9.0])  # under the 0.5 operating threshold: no sphere drawn
    assert scan_detection_dice(tmp_path / "label.nii.gz", below) == 0.0


def test_froc_bookkeeping_of_a_hand_computed_case():
    # 2 scans, 2 nodules; scan a: hit (0.9) + FP (0.8); scan b: FP (0.95), nodule missed.
    ann = {"a": [Nodule("a", (0.0, 0.0, 0.0), 10.0)], "b": [Nodule("b", (50.0, 0.0, 0.0), 10.0)]}
    cands = {"a": ScanCandidates([[1.0, 0, 0], [30.0, 0, 0]], [0.9, 0.8]), "b": ScanCandidates([[0.0, 0, 0]], [0.95])}
    froc = compute_froc(cands, ann, ["a", "b"])
    # thresholds 0.95 -> (0.5 FP/scan, 0); 0.9 -> (0.5, 0.5); 0.8 -> (1.0, 0.5); sensitivities at 1/8..8:
    np.testing.assert_allclose(froc.sensitivities, [0, 0, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert froc.cpm == pytest.approx(2.5 / 7)


def test_evaluate_on_a_processed_split_with_the_oracle(processed_split, oracle, tmp_path):
    _, split, truth = processed_split
    assert {c.seriesuid for c in discover_cases(split)} == set(truth)
    out = tmp_path / "eval"
    metrics = evaluate(oracle, split, out, tiny_settings(), bootstrap=50)
    assert METRIC_KEYS <= set(metrics)
    assert metrics["cpm"] > 0.95 and metrics["n_nodules"] == len(truth) and metrics["n_failed"] == 0
    assert metrics["cpm_ci"][0] <= metrics["cpm"] <= metrics["cpm_ci"][1]
    assert metrics["detection_dice"] > 0.5 and metrics["center_accuracy"] == 1.0
    assert metrics["size_mae_mm"] == pytest.approx(0.0, abs=1e-3)  # oracle diameter 8 mm = truth
    assert json.loads((out / "metrics.json").read_text())["cpm"] == metrics["cpm"]
    assert (out / "froc.png").read_bytes()[:4] == b"\x89PNG" and (out / "candidates.csv").is_file()
    with (out / "per_nodule.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == PER_NODULE_COLUMNS
    assert {r["seriesuid"] for r in rows} == set(truth) and all(r["hit"] == "1" for r in rows)
    assert all(float(r["distance_mm"]) < 1.5 for r in rows)


def test_evaluate_on_a_raw_folder_has_no_dice_and_exit_code_0(make_raw_dataset, oracle, tmp_path):
    root, truth = make_raw_dataset(dict(list(tricky_geometries().items())[:1]))
    metrics = evaluate(oracle, root, tmp_path / "eval", tiny_settings(), bootstrap=0)
    assert metrics["detection_dice"] is None and metrics["cpm"] == 1.0 and "cpm_ci" not in metrics


def test_evaluate_command_exit_codes(processed_split, tiny_checkpoint, tiny_config, tmp_path):
    _, split, _ = processed_split
    base = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--config", str(tiny_config()), "--bootstrap", "10"]
    assert pivot_main([*base, "--data-dir", str(split), "--output-dir", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "metrics.json").is_file()
    assert pivot_main([*base, "-i", str(tmp_path / "none"), "-o", str(tmp_path / "e2")]) == 2


def test_evaluate_yaml_layered_over_train_yaml_writes_metrics(processed_split, tiny_checkpoint, tmp_path):
    from monai.bundle import ConfigWorkflow

    _, split, _ = processed_split
    configs = [str(REPO_ROOT / "bundle/configs/train.yaml"), str(REPO_ROOT / "bundle/configs/evaluate.yaml")]
    overrides = {
        "validate#checkpoint": str(tiny_checkpoint),
        "validate#output_dir": str(tmp_path / "eval"),
        "validate#bootstrap": 20,
        "data#test_dir": str(split),
        "data#patch_size": [32, 32, 32],
        "model#base_filters": 4,
        "model#depth": 2,
        "device#type": "cpu",
        "logging#tensorboard": False,
    }
    workflow = ConfigWorkflow(config_file=configs, workflow_type="eval", **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_scans"] == 3 and "cpm_ci" in metrics
