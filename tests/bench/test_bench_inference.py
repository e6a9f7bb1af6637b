"""The inference benchmark measures what `pivot infer` runs: with a classifier beside the model, both stages."""

from __future__ import annotations

import json

import torch

from benchmarks.common import DEMO_CONFIG, QUICK_OVERRIDES, load_profile
from pivot_monai.inference.fpr import CandidateClassifier
from pivot_monai.networks import build_network
from pivot_monai.networks.checkpoint import save_model
from pivot_monai.networks.classifier import MultiScaleClassifier
from pivot_monai.networks.metadata import describe_model


def test_a_classifier_beside_the_model_gets_its_own_arm(tmp_path, monkeypatch):
    from benchmarks import bench_inference, common

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    sections = load_profile(DEMO_CONFIG, QUICK_OVERRIDES)  # a model trained at the benchmark's --quick settings
    torch.manual_seed(0)
    model = save_model(
        tmp_path / "run" / "model.pt", build_network(sections["model"]).state_dict(), describe_model(sections)
    )
    net = MultiScaleClassifier(num_scales=2, channels=(4, 8), hidden=8)
    CandidateClassifier(net, [12.0, 24.0], 8, fusion_weight=0.5).save(tmp_path / "run" / "fpr.pt")

    rows = bench_inference.main(["--quick", "--checkpoint", str(model)])
    metrics = {r.metric.split(" [")[0]: r for r in rows}
    both = metrics["s/scan, detector + FP-reduction classifier vs detector only"]
    assert both.value > 0 and both.baseline > 0
    details = json.loads((tmp_path / "results" / "inference.json").read_text())["details"]
    assert "fpr" in details["pivot_fpr"]["stage_seconds"] and "fpr" not in details["pivot"]["stage_seconds"]
