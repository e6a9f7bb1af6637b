"""``pivot infer`` and ``pivot evaluate`` with the false-positive-reduction classifier (on by default, ``--no-fpr``)."""

from __future__ import annotations

import json

import numpy as np
import torch

from pivot_monai.cli import main
from pivot_monai.data.preprocess import PreprocessConfig, preprocess_image, read_for_preprocessing
from pivot_monai.inference.fpr import CandidateClassifier, fuse_probability, load_fpr_section
from pivot_monai.metrics.froc import read_submission_csv
from pivot_monai.networks.classifier import MultiScaleClassifier


def _classifier(seed: int = 0) -> CandidateClassifier:
    torch.manual_seed(seed)
    return CandidateClassifier(MultiScaleClassifier(num_scales=2, channels=(4, 8), hidden=8), [12.0, 24.0], 8)


def test_pivot_infer_fuses_the_classifier_next_to_the_checkpoint_and_no_fpr_turns_it_off(
    make_raw_dataset, tiny_checkpoint, tiny_config, tmp_path
):
    from tests.inference.conftest import TINY_DATA, tricky_geometries

    uid, geom = next(iter(tricky_geometries().items()))
    root, _ = make_raw_dataset({uid: geom})
    clf = _classifier()
    clf.save(tiny_checkpoint.with_name("fpr.pt"))
    base = ["infer", "--checkpoint", str(tiny_checkpoint), "--input", str(root), "--device", "cpu",
            "--config", str(tiny_config(score_threshold=0.0, max_candidates=10))]  # fmt: skip
    assert main([*base, "--output", str(tmp_path / "fpr")]) == 0
    assert main([*base, "--output", str(tmp_path / "plain"), "--no-fpr"]) == 0
    fused = read_submission_csv(tmp_path / "fpr" / "candidates.csv")[uid]
    plain = read_submission_csv(tmp_path / "plain" / "candidates.csv")[uid]
    settings = [json.loads((tmp_path / d / "infer_report.json").read_text())["settings"] for d in ("fpr", "plain")]
    assert settings[0]["fpr"]["checkpoint"] == str(tiny_checkpoint.with_name("fpr.pt")) and settings[1]["fpr"] is None
    # the fused probability is detector^(1-w) * classifier^w of the same candidates, re-sorted
    cfg = PreprocessConfig.from_data_section(TINY_DATA)
    scan = preprocess_image(read_for_preprocessing(root / "subset0" / f"{uid}.mhd", cfg), cfg)
    weight = load_fpr_section(None)["fusion_weight"]  # the config's weight (fpr.yaml) wins over the checkpoint's
    expected = fuse_probability(plain.probability, clf.score(scan.image, scan.geometry, plain.world), weight)
    order = np.argsort(-expected, kind="stable")
    np.testing.assert_allclose(fused.world, plain.world[order], atol=1e-6)
    np.testing.assert_allclose(fused.probability, expected[order], atol=1e-5)


def test_pivot_evaluate_runs_an_explicit_classifier_and_records_it(
    tiny_processed, tiny_checkpoint, tiny_config, tmp_path
):
    ckpt = _classifier().save(tmp_path / "elsewhere" / "my_fpr.pt")
    base = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data-dir", str(tiny_processed / "test"),
            "--config", str(tiny_config(score_threshold=0.0)), "--bootstrap", "0", "--device", "cpu"]  # fmt: skip
    assert main([*base, "--output-dir", str(tmp_path / "e"), "--classifier", str(ckpt)]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["settings"]["fpr"]["checkpoint"] == str(ckpt) and 0.0 <= metrics["cpm"] <= 1.0


def test_a_config_may_set_the_fpr_section_for_pivot_infer(make_raw_dataset, tiny_checkpoint, tmp_path):
    import yaml

    from tests.inference.conftest import TINY_DATA, TINY_INFERENCE, TINY_MODEL, tricky_geometries

    uid, geom = next(iter(tricky_geometries().items()))
    root, _ = make_raw_dataset({uid: geom})
    ckpt = _classifier().save(tmp_path / "clf" / "c.pt")
    cfg = tmp_path / "user.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": TINY_DATA, "model": TINY_MODEL, "inference": {**TINY_INFERENCE, "score_threshold": 0.0},
        "fpr": {"checkpoint": str(ckpt), "fusion_weight": 1.0},
    }))  # fmt: skip
    argv = ["infer", "--checkpoint", str(tiny_checkpoint), "-i", str(root), "-o", str(tmp_path / "o"), "-c", str(cfg)]
    assert main([*argv, "--device", "cpu"]) == 0
    fpr = json.loads((tmp_path / "o" / "infer_report.json").read_text())["settings"]["fpr"]
    assert fpr["checkpoint"] == str(ckpt) and fpr["fusion_weight"] == 1.0
