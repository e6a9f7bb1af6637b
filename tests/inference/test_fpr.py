"""False-positive reduction: patch coordinates, labels, fusion, the classifier checkpoint, training, pivot classify."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from pivot_monai.cli import main
from pivot_monai.data.annotations import Nodule
from pivot_monai.data.geometry import Geometry
from pivot_monai.data.preprocess import PreprocessConfig, preprocess_image, read_for_preprocessing
from pivot_monai.inference.classify import read_candidates_csv
from pivot_monai.inference.fpr import (
    CandidateClassifier,
    FPRSettings,
    candidate_labels,
    extract_patches,
    fuse_probability,
    load_fpr_section,
    resolve_classifier,
)
from pivot_monai.inference.fpr_train import augment_batch, draw_batch, nodule_contrast_at, train_classifier
from pivot_monai.metrics.froc import read_submission_csv, write_submission_csv
from pivot_monai.metrics.matching import ScanCandidates
from pivot_monai.networks.classifier import MultiScaleClassifier
from tests.conftest import FLIP_Z, oblique_direction

TINY_FPR = {"fov_mm": [12, 24], "grid": 8, "channels": [4, 8], "hidden": 8, "epochs": 2, "batch_size": 8}


def _linear_image(geometry: Geometry, slope: np.ndarray) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in geometry.size], indexing="ij"), axis=-1)
    return (geometry.index_to_world(idx) @ slope).astype(np.float32)


def _classifier(num_scales: int = 2, grid: int = 8, seed: int = 0) -> CandidateClassifier:
    torch.manual_seed(seed)
    net = MultiScaleClassifier(num_scales=num_scales, channels=(4, 8), hidden=8)
    return CandidateClassifier(net, [12.0, 24.0][:num_scales], grid, fusion_weight=0.5)


@pytest.mark.parametrize("direction", [np.eye(3), FLIP_Z, oblique_direction(15.0)], ids=["eye", "flipz", "oblique"])
def test_patches_sample_the_world_points_along_world_axes(direction):
    # a linear function of world mm is reproduced exactly by trilinear sampling, so every patch voxel can be checked
    geom = Geometry((-50.0, 20.0, -300.0), (0.7, 0.9, 2.5), direction, (90, 80, 40))
    slope = np.array([0.01, -0.02, 0.03])
    image = _linear_image(geom, slope)
    centres = geom.index_to_world(np.array([[45.0, 40.0, 20.0], [40.3, 31.7, 18.5]]))
    patches = extract_patches(image, geom, centres, [8.0, 12.0], 8).numpy()
    assert patches.shape == (2, 2, 8, 8, 8)
    for s, fov in enumerate((8.0, 12.0)):
        off = (np.arange(8) - 3.5) * fov / 8
        grid = np.stack(np.meshgrid(off, off, off, indexing="ij"), axis=-1)
        for n in range(2):
            np.testing.assert_allclose(patches[n, s], (centres[n] + grid) @ slope, atol=1e-4)


def test_patches_read_air_outside_the_image(aniso_geometry):
    image = np.ones(aniso_geometry.size, dtype=np.float32)
    corner = aniso_geometry.index_to_world(np.zeros(3))
    patch = extract_patches(image, aniso_geometry, corner[None], [20.0], 8)[0, 0]
    assert float(patch[-1, -1, -1]) == pytest.approx(1.0) and float(patch[0, 0, 0]) == 0.0  # +x+y+z inside, -x-y-z out


def test_patches_of_no_candidates_are_empty(aniso_geometry):
    out = extract_patches(np.zeros(aniso_geometry.size), aniso_geometry, np.zeros((0, 3)), [10.0, 20.0], 8)
    assert out.shape == (0, 2, 8, 8, 8)


@pytest.mark.parametrize("uid", ["1.3.6.aniso", "1.3.6.flipz", "1.3.6.oblique"])
def test_patches_of_a_preprocessed_raw_scan_centre_on_the_nodule(make_raw_dataset, uid):
    from tests.inference.conftest import tricky_geometries

    geom = tricky_geometries()[uid]
    root, truth = make_raw_dataset({uid: geom}, diameter_mm=10.0)
    cfg = PreprocessConfig(target_spacing=(1.5, 1.5, 1.5), crop_margin_mm=6)
    scan = preprocess_image(read_for_preprocessing(root / "subset0" / f"{uid}.mhd", cfg), cfg)
    centre = truth[uid][1]
    patch = extract_patches(scan.image, scan.geometry, centre[None], [12.0, 40.0], 16)[0].numpy()
    # the nodule (~0.74) fills the middle of the 12 mm patch; the 40 mm patch sees lung (~0.11) around it
    assert patch[0, 6:10, 6:10, 6:10].mean() > 0.6
    assert patch[1, 7:9, 7:9, 7:9].mean() > 0.6
    assert np.median(patch[1]) < 0.3


def test_candidate_labels_follow_the_luna16_hit_rule():
    nodules = [Nodule("s", (0.0, 0.0, 0.0), 10.0)]
    excluded = [Nodule("s", (40.0, 0.0, 0.0), -1.0)]  # unknown diameter: 10 mm
    world = np.array([[4.9, 0, 0], [5.0, 0, 0], [44.0, 0, 0], [20.0, 0, 0]])
    assert candidate_labels(world, nodules, excluded).tolist() == [1, 0, -1, 0]


def test_fusion_weight_moves_from_detector_to_classifier():
    det, cls = np.array([0.9, 0.2]), np.array([0.1, 0.8])
    np.testing.assert_allclose(fuse_probability(det, cls, 0.0), det)
    np.testing.assert_allclose(fuse_probability(det, cls, 1.0), cls)
    np.testing.assert_allclose(fuse_probability(det, cls, 0.5), np.sqrt(det * cls))


def test_rescore_sorts_by_fused_probability_and_keeps_the_other_columns(aniso_geometry, rng):
    clf = _classifier()
    world = aniso_geometry.index_to_world(rng.uniform(5, 20, (6, 3)))
    cands = ScanCandidates(world, np.linspace(0.9, 0.4, 6), np.arange(6.0), np.linspace(0, 1, 6))
    image = rng.random(aniso_geometry.size).astype(np.float32)
    new, order = clf.rescore(image, aniso_geometry, cands)
    assert np.all(np.diff(new.probability) <= 0)
    np.testing.assert_array_equal(new.world, world[order])
    np.testing.assert_array_equal(new.diameter_mm, np.arange(6.0)[order])


def test_classifier_checkpoint_round_trips(tmp_path, aniso_geometry, rng):
    clf = _classifier()
    path = clf.save(tmp_path / "fpr.pt")
    again = CandidateClassifier.load(path)
    assert (again.fov_mm, again.grid, again.fusion_weight) == (clf.fov_mm, clf.grid, clf.fusion_weight)
    image, world = rng.random(aniso_geometry.size), aniso_geometry.index_to_world(rng.uniform(5, 20, (3, 3)))
    np.testing.assert_allclose(again.score(image, aniso_geometry, world), clf.score(image, aniso_geometry, world))


def test_loading_a_detector_checkpoint_as_classifier_says_which_is_which(tmp_path):
    torch.save({"weight": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="--classifier"):
        CandidateClassifier.load(tmp_path / "model.pt")


def test_resolve_classifier_finds_fpr_pt_next_to_the_detector_unless_disabled(tmp_path):
    detector = tmp_path / "model.pt"
    assert resolve_classifier(detector) is None
    _classifier().save(tmp_path / "fpr.pt")
    assert isinstance(resolve_classifier(detector), CandidateClassifier)
    assert resolve_classifier(detector, enabled=False) is None
    assert resolve_classifier(detector, {"enabled": False}) is None
    assert resolve_classifier(detector, {"fusion_weight": 0.8}).fusion_weight == 0.8


def test_fpr_section_defaults_come_from_fpr_yaml_and_validate():
    section = load_fpr_section(None)
    settings = FPRSettings.from_section(section)
    assert settings.fov_mm == tuple(float(v) for v in section["fov_mm"]) and settings.enabled
    with pytest.raises(KeyError, match="fpr.fusion_wieght"):
        load_fpr_section({"fpr": {"fusion_wieght": 0.3}})
    with pytest.raises(ValueError, match="fpr.fusion_weight"):
        FPRSettings.from_section({"fusion_weight": 1.5})
    with pytest.raises(ValueError, match=r"fpr.positive_sampling must be one of \['uniform', 'contrast'\], got 'size'"):
        FPRSettings.from_section({"positive_sampling": "size"})
    with pytest.raises(ValueError, match="fpr.positive_contrast_hu"):
        FPRSettings.from_section({"positive_contrast_hu": 0})


def test_augmentation_permutes_voxels_the_same_way_in_every_scale(rng):
    x = torch.rand(4, 2, 6, 6, 6)
    x[:, 1] = x[:, 0]
    out = augment_batch(x, rng)
    assert torch.equal(out[:, 0], out[:, 1])
    assert torch.allclose(out.sum(dim=(2, 3, 4)), x.sum(dim=(2, 3, 4)))


def _scan_candidates(processed_split, rng) -> dict[str, ScanCandidates]:
    """Per scan: the nodule centre (a hit) and five points elsewhere in the image (false positives)."""
    out = {}
    for meta_path in sorted(processed_split.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        geom = Geometry.from_dict(meta["processed_geometry"])
        pts = [geom.index_to_world(rng.uniform(2, np.asarray(geom.size) - 3)) for _ in range(5)]
        pts += [np.asarray(n["world"]) for n in meta["nodules"]]
        out[meta["seriesuid"]] = ScanCandidates(np.asarray(pts), rng.uniform(0.1, 0.9, len(pts)))
    return out


@pytest.fixture
def trained(tiny_processed, tmp_path, rng):
    """A classifier trained for two tiny epochs on synthetic candidates of the tiny train split."""
    csv_path = write_submission_csv(tmp_path / "train_candidates.csv", _scan_candidates(tiny_processed / "train", rng))
    report = train_classifier(
        tiny_processed / "train", tmp_path / "models" / "fpr.pt", candidates=csv_path, config={"fpr": TINY_FPR}
    )
    return report


def test_train_classifier_writes_a_checkpoint_and_its_report(trained, tmp_path):
    assert trained["n_samples"]["hit"] >= 1 and trained["n_samples"]["fp"] >= 5
    assert trained["n_samples"]["nodule"] == 4 * trained["n_samples"]["hit"]  # positives_per_nodule jittered copies
    assert len(trained["losses"]) == 2 and all(np.isfinite(trained["losses"]))
    clf = CandidateClassifier.load(trained["checkpoint"])
    assert clf.fov_mm == (12.0, 24.0) and clf.grid == 8
    assert json.loads((tmp_path / "models" / "fpr_report.json").read_text())["checkpoint"] == trained["checkpoint"]


def test_train_classifier_needs_candidates_or_a_detector(tiny_processed, tmp_path):
    with pytest.raises(ValueError, match="candidates=CSV or detector"):
        train_classifier(tiny_processed / "train", tmp_path / "fpr.pt")


def test_pivot_classify_rescores_a_luna16_candidates_file(tiny_processed, tmp_path, rng):
    cands = _scan_candidates(tiny_processed / "test", rng)
    src = write_submission_csv(tmp_path / "candidates.csv", cands)
    ckpt = _classifier().save(tmp_path / "fpr.pt")
    raw = tiny_processed.parent / "raw"
    code = main(["classify", "--candidates", str(src), "--input", str(raw), "--output", str(tmp_path / "out"),
                 "--classifier", str(ckpt), "--device", "cpu"])  # fmt: skip
    assert code == 0
    out = read_submission_csv(tmp_path / "out" / "candidates.csv")
    assert set(out) == set(cands)
    for uid, scan in cands.items():
        assert len(out[uid]) == len(scan)
        assert np.all((out[uid].probability >= 0) & (out[uid].probability <= 1))
        assert np.all(np.diff(out[uid].probability) <= 0)
        assert not np.allclose(np.sort(out[uid].probability), np.sort(scan.probability))
        # the same candidate positions, re-ordered
        np.testing.assert_allclose(np.sort(out[uid].world, axis=0), np.sort(scan.world, axis=0))
    report = json.loads((tmp_path / "out" / "classify_report.json").read_text())
    assert sorted(report["ok"]) == sorted(cands) and report["failed"] == []


def test_pivot_classify_reads_the_fp_track_format_and_reports_missing_scans(tiny_processed, tmp_path):
    uid = json.loads(next((tiny_processed / "test").glob("*/meta.json")).read_text())["seriesuid"]
    src = tmp_path / "candidates_V2.csv"
    with src.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "class"])
        writer.writerow([uid, -100.0, -90.0, -220.0, 0])
        writer.writerow(["1.2.missing", 0.0, 0.0, 0.0, 1])
    assert read_candidates_csv(src)[1] is False
    ckpt = _classifier().save(tmp_path / "fpr.pt")
    code = main(["classify", "--candidates", str(src), "--input", str(tiny_processed.parent / "raw"),
                 "--output", str(tmp_path / "out.csv"), "--classifier", str(ckpt), "--device", "cpu"])  # fmt: skip
    assert code == 1  # the missing scan
    out = read_submission_csv(tmp_path / "out.csv")
    assert list(out) == [uid]
    report = json.loads((tmp_path / "classify_report.json").read_text())
    assert report["fusion_weight"] == 1.0 and report["failed"][0]["seriesuid"] == "1.2.missing"


def test_pivot_classify_without_a_classifier_exits_2_naming_the_flag(tmp_path):
    src = write_submission_csv(tmp_path / "c.csv", {})
    assert main(["classify", "--candidates", str(src), "--input", str(tmp_path), "--output", str(tmp_path)]) == 2


def test_fpr_yaml_bundle_trains_on_the_detectors_candidates(tiny_processed, tmp_path):
    from monai.bundle import ConfigWorkflow

    from tests.conftest import REPO_ROOT
    from tests.inference.conftest import TINY_MODEL

    models = tmp_path / "models"
    models.mkdir()
    torch.manual_seed(0)
    from pivot_monai.networks import build_network

    torch.save(build_network(TINY_MODEL).state_dict(), models / "model.pt")
    overrides = {
        "data#train_dir": str(tiny_processed / "train"),
        "data#patch_size": [32, 32, 32],
        "checkpointing#dir": str(models),
        "inference#score_threshold": 0.0,
        "inference#max_candidates": 20,
        "device#type": "cpu",
        "logging#tensorboard": False,
        **{f"model#{k}": v for k, v in TINY_MODEL.items()},
        **{f"fpr#{k}": v for k, v in TINY_FPR.items()},
    }
    configs = [str(REPO_ROOT / "bundle/configs/train.yaml"), str(REPO_ROOT / "bundle/configs/fpr.yaml")]
    workflow = ConfigWorkflow(config_file=configs, workflow_type=None, **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    report = json.loads((models / "fpr_report.json").read_text())
    assert report["detector"] == str(models / "model.pt") and report["n_samples"]["fp"] > 0
    assert CandidateClassifier.load(models / "fpr.pt").detector == "model.pt"
    assert (models / "fpr_train_candidates.csv").is_file()


# ------------------------------------------------------------------------------------------------ contrast weighting
@pytest.mark.parametrize("direction", [np.eye(3), FLIP_Z, oblique_direction(20.0)], ids=["eye", "flipz", "oblique"])
def test_nodule_contrast_at_measures_hu_above_the_surroundings_on_any_geometry(direction):
    geometry = Geometry((-31.0, 12.5, -80.0), (0.7, 0.8, 1.5), direction, (64, 56, 36))
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in geometry.size], indexing="ij"), axis=-1)
    world = geometry.index_to_world(idx)
    lung, window = (-850.0 + 1000.0) / 1400.0, (-1000.0, 400.0)
    image = np.full(geometry.size, lung, dtype=np.float32)
    centres = {"solid": geometry.index_to_world(np.array([20.0, 20.0, 14.0])),
               "ggo": geometry.index_to_world(np.array([44.0, 36.0, 22.0]))}  # fmt: skip
    for name, hu in (("solid", 40.0), ("ggo", -550.0)):
        image[np.linalg.norm(world - centres[name], axis=-1) <= 5.0] = (hu + 1000.0) / 1400.0
    nodules = [Nodule("s", tuple(centres["solid"]), 10.0), Nodule("s", tuple(centres["ggo"]), 10.0),
               Nodule("s", tuple(centres["ggo"]), -1.0)]  # fmt: skip
    contrast = nodule_contrast_at(image, geometry, nodules, window)
    # the trilinear resampling of a sphere drawn on 1.5 mm slices softens its edge: within 15 % of 890 and 300 HU
    assert contrast[0] == pytest.approx(890.0, rel=0.15) and contrast[1] == pytest.approx(300.0, rel=0.15)
    assert np.isnan(contrast[2])  # no diameter


def test_draw_batch_draws_positives_by_their_weights():
    rng = np.random.default_rng(0)
    pos, neg = np.array([0, 1]), np.array([2, 3, 4])
    drawn = np.concatenate([draw_batch(rng, pos, neg, 32, 0.5, np.array([0.75, 0.25])) for _ in range(400)])
    n_pos = np.isin(drawn, pos).sum()
    assert n_pos / drawn.size == pytest.approx(0.5, abs=0.02)
    assert (drawn == 0).sum() / n_pos == pytest.approx(0.75, abs=0.02)
    uniform = np.concatenate([draw_batch(rng, pos, neg, 32, 0.5) for _ in range(400)])
    assert (uniform == 0).sum() / np.isin(uniform, pos).sum() == pytest.approx(0.5, abs=0.02)


def test_contrast_positive_sampling_weights_the_classifiers_positives(tiny_processed, tmp_path, rng):
    csv_path = write_submission_csv(tmp_path / "cands.csv", _scan_candidates(tiny_processed / "train", rng))
    reports = {}
    for mode in ("uniform", "contrast"):
        reports[mode] = train_classifier(
            tiny_processed / "train", tmp_path / mode / "fpr.pt", candidates=csv_path,
            config={"fpr": {**TINY_FPR, "epochs": 1, "positive_sampling": mode, "positive_contrast_hu": 5000}},
        )  # fmt: skip
    assert reports["uniform"]["positive_weights"] == {"mean": 1.0, "max": 1.0}
    # a reference far above any contrast: every positive gets the largest weight, 3
    assert reports["contrast"]["positive_weights"] == {"mean": 3.0, "max": 3.0}
    assert reports["contrast"]["fpr"]["positive_sampling"] == "contrast"
