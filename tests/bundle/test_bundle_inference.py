"""The inference bundles behave as in model zoo and as ``pivot infer``: ``run inference``, ``run evaluating``,
``verify_net_in_out network_def`` and ``ckpt_export``, each with only a self-describing checkpoint."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from pivot_monai.cli import main as pivot_main
from pivot_monai.config.bundle import bundle_errors
from pivot_monai.data.annotations import read_annotations
from pivot_monai.inference.fpr import CandidateClassifier
from pivot_monai.inference.model_settings import ModelConfigError
from pivot_monai.metrics import compute_froc, read_submission_csv
from pivot_monai.networks import OUTPUT_KEYS, build_network
from pivot_monai.networks.checkpoint import load_model, save_model
from pivot_monai.networks.classifier import MultiScaleClassifier
from pivot_monai.networks.metadata import describe_model, read_metadata
from tests.conftest import REPO_ROOT
from tests.inference.conftest import TINY_DATA, TINY_INFERENCE, tricky_geometries

CONFIGS = REPO_ROOT / "bundle" / "configs"
INFERENCE_FILES = [str(CONFIGS / "train.yaml"), str(CONFIGS / "inference.yaml")]
EVALUATE_FILES = [str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")]
ORACLE = {"type": "custom", "class": "tests.inference.conftest.OracleNet", "kwargs": {}}
TINY_NET = {"base_filters": 4, "depth": 2, "output_stride": 2}


def _bundle(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=REPO_ROOT, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout, env=env,
    )  # fmt: skip
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return res


def _described(path, model_section, state_dict, inference=None):
    """A model.pt as training writes it: the weights and the sections it was trained with (the tiny CPU ones)."""
    sections = {"model": model_section, "data": TINY_DATA, "inference": {**TINY_INFERENCE, **(inference or {})}}
    return save_model(path, state_dict, describe_model(sections, run_id="run-under-test", experiment="tests"))


@pytest.fixture
def oracle_model(tmp_path):
    """The oracle detector as a self-describing model.pt, with a (random) FP-reduction classifier beside it."""
    from tests.inference.conftest import OracleNet

    path = _described(tmp_path / "model" / "model.pt", ORACLE, OracleNet().state_dict(), {"score_threshold": 0.02})
    torch.manual_seed(3)
    net = MultiScaleClassifier(num_scales=2, channels=[4, 8], hidden=8)
    CandidateClassifier(net, (20.0, 32.0), 8, fusion_weight=0.25, detector="model.pt").save(path.with_name("fpr.pt"))
    return path


def _rows(path):
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


def test_run_inference_gives_the_candidates_and_cpm_of_pivot_infer(make_raw_dataset, oracle_model, tmp_path):
    root, truth = make_raw_dataset(dict(list(tricky_geometries().items())[:2]))
    assert pivot_main(["infer", "--checkpoint", str(oracle_model), "-i", str(root), "-o", str(tmp_path / "cli")]) == 0
    res = _bundle(
        "run", "inference", "--config_file", repr(INFERENCE_FILES), "--input", str(root),
        "--output", str(tmp_path / "bundle"), "--checkpoint", str(oracle_model), "--device#type", "cpu",
    )  # fmt: skip
    assert "describes itself" in res.stdout + res.stderr
    cli, bundle = _rows(tmp_path / "cli" / "candidates.csv"), _rows(tmp_path / "bundle" / "candidates.csv")
    assert len(cli) == 1 + len(truth) and cli == bundle  # the same candidates, scores and order (one a scan)
    reports = [json.loads((tmp_path / d / "infer_report.json").read_text()) for d in ("cli", "bundle")]
    for report in reports:  # the model's own settings: its 1.5 mm and threshold, and the classifier beside it
        assert report["settings"]["preprocess"]["target_spacing"] == TINY_DATA["target_spacing"]
        assert report["settings"]["decode"]["score_threshold"] == 0.02
        assert report["settings"]["fpr"]["checkpoint"].endswith("fpr.pt")
    nodules, uids = read_annotations(root / "annotations.csv"), sorted(truth)
    found = [read_submission_csv(tmp_path / d / "candidates.csv") for d in ("cli", "bundle")]
    cpm = [compute_froc(f, nodules, uids).cpm for f in found]
    assert cpm[0] == cpm[1] and cpm[0] > 0.5


def test_run_evaluating_exists_and_uses_the_checkpoint_settings(make_raw_dataset, oracle_model, tmp_path):
    from monai.bundle import run

    root, _ = make_raw_dataset(dict(list(tricky_geometries().items())[:1]))
    out = tmp_path / "eval"
    overrides = {"validate#checkpoint": str(oracle_model), "data#test_dir": str(root), "device#type": "cpu"}
    run(
        "evaluating",
        config_file=EVALUATE_FILES,
        **overrides,
        **{"validate#output_dir": str(out), "validate#bootstrap": 0},
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_scans"] == 1 and metrics["cpm"] is not None
    assert metrics["settings"]["preprocess"]["target_spacing"] == TINY_DATA["target_spacing"]
    assert metrics["settings"]["fpr"]["checkpoint"].endswith("fpr.pt")


def test_an_override_that_contradicts_the_checkpoint_is_an_error_naming_the_key(oracle_model, tmp_path):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=INFERENCE_FILES, workflow_type="infer", checkpoint=str(oracle_model), input=str(tmp_path),
        **{"data#target_spacing": [2.0, 2.0, 2.0], "device#type": "cpu"},
    )  # fmt: skip
    workflow.initialize()
    with pytest.raises(ModelConfigError, match=r"data\.target_spacing: \[2\.0, 2\.0, 2\.0\] \(config\) vs \[1\.5"):
        with bundle_errors():  # what the bundle command prints (train.yaml's one-line errors)
            workflow.parser.get_parsed_content("settings")


def test_verify_net_in_out_network_def_passes_with_and_without_a_checkpoint(tmp_path):
    from monai.bundle import verify_net_in_out

    torch.manual_seed(0)
    model = _described(tmp_path / "model.pt", TINY_NET, build_network(TINY_NET).state_dict())
    for extra in ({}, {"checkpoint": str(model)}):  # a fresh checkout has no model.pt: the config's model section
        verify_net_in_out("network_def", meta_file=str(CONFIGS / "metadata.json"), config_file=INFERENCE_FILES,
                          device="cpu", **extra)  # fmt: skip


def test_ckpt_export_of_network_def_gives_a_self_describing_model_pivot_infer_reads(make_raw_dataset, tmp_path):
    from monai.bundle import ckpt_export

    torch.manual_seed(0)
    model = _described(tmp_path / "model.pt", TINY_NET, build_network(TINY_NET).state_dict())
    ts = tmp_path / "model.ts"
    ckpt_export("network_def", filepath=str(ts), ckpt_file=str(model), meta_file=str(CONFIGS / "metadata.json"),
                config_file=INFERENCE_FILES, checkpoint=str(model))  # fmt: skip
    assert read_metadata(ts)["run_id"] == "run-under-test"  # the network's description survives scripting
    x = torch.rand(1, 1, 32, 24, 16)
    with torch.no_grad():
        eager, scripted = load_model(model)(x), load_model(ts)(x)  # a dict, and the same maps stacked as channels
    assert scripted.shape == (1, 3, 16, 12, 8)
    assert torch.allclose(torch.cat([eager[k] for k in OUTPUT_KEYS], dim=1), scripted, atol=1e-5)
    root, _ = make_raw_dataset(dict(list(tricky_geometries().items())[:1]))
    assert pivot_main(["infer", "--model", str(ts), "-i", str(root), "-o", str(tmp_path / "ts"), "--no-fpr"]) == 0
    report = json.loads((tmp_path / "ts" / "infer_report.json").read_text())
    assert report["settings"]["preprocess"]["target_spacing"] == TINY_DATA["target_spacing"] and not report["failed"]
