"""scripts/run_demo.py: the two demo profiles reach the bundle command, the classifier and the run folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def run_demo():
    spec = importlib.util.spec_from_file_location("run_demo", REPO_ROOT / "scripts" / "run_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fast_changes_the_default_scan_counts_but_not_given_ones(run_demo):
    args = run_demo.parse_args([])
    assert (args.num_scans, args.heldout_scans, args.fast) == (100, 20, False)
    args = run_demo.parse_args(["--fast"])
    assert (args.num_scans, args.heldout_scans, args.fast) == (70, 16, True)
    args = run_demo.parse_args(["--fast", "--num-scans", "30", "--heldout-scans", "4"])
    assert (args.num_scans, args.heldout_scans) == (30, 4)


@pytest.mark.parametrize("fast", [False, True])
def test_each_profile_trains_with_its_layers_into_its_own_run_folder(run_demo, monkeypatch, tmp_path, fast):
    calls, steps = [], []
    monkeypatch.setattr(run_demo, "synth", lambda *a, **k: 0)
    monkeypatch.setattr(run_demo, "pivot", lambda argv: steps.append(list(argv)) or 0)
    monkeypatch.setattr(run_demo.subprocess, "call", lambda cmd: calls.append(list(cmd)) or 0)
    evaluated = {}
    monkeypatch.setattr(run_demo, "infer_and_evaluate", lambda *a, **k: evaluated.update(args=a, kwargs=k) or 0)
    assert run_demo.run(tmp_path, 10, 0, 2, fast=fast) == 0

    (cmd,) = calls
    layers = cmd[cmd.index("--config_file") + 1]
    fpr = next(s for s in steps if s[0] == "train-fpr")
    prep = next(s for s in steps if s[0] == "preprocess")
    # preprocessing reads the profile's own spacing: demo_fast.yaml's 1.5 mm, demo.yaml's 1.25 mm
    assert prep[prep.index("--config") + 1] == f"bundle/configs/{'demo_fast' if fast else 'demo'}.yaml"
    models = Path("bundle/models/demo_fast") if fast else Path("bundle/models")
    if fast:
        assert layers == "['bundle/configs/train.yaml','bundle/configs/demo.yaml','bundle/configs/demo_fast.yaml']"
        assert cmd[cmd.index("--checkpointing#dir") + 1] == str(models)
        assert fpr[fpr.index("--config") + 1] == "bundle/configs/demo_fast.yaml"
        assert evaluated["kwargs"]["metadata"] is None  # metadata.json describes bundle/models/model.pt only
    else:
        assert layers == "['bundle/configs/train.yaml','bundle/configs/demo.yaml']"
        assert "--checkpointing#dir" not in cmd and "--config" not in fpr
        assert evaluated["kwargs"]["metadata"] == run_demo.METADATA
    assert fpr[fpr.index("--checkpoint") + 1] == str(models / "model.pt")
    assert evaluated["args"][3] == models / "model.pt"
