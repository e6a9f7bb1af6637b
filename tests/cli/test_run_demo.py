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
    assert (args.num_scans, args.heldout_scans, args.profile) == (100, 20, "demo")
    args = run_demo.parse_args(["--fast"])
    assert (args.num_scans, args.heldout_scans, args.profile) == (70, 16, "fast")
    args = run_demo.parse_args(["--fast", "--num-scans", "30", "--heldout-scans", "4"])
    assert (args.num_scans, args.heldout_scans) == (30, 4)
    # the long profile trains on make demo's own scans
    args = run_demo.parse_args(["--long"])
    assert (args.num_scans, args.heldout_scans, args.profile) == (100, 20, "long")


def test_fast_and_long_are_exclusive(run_demo, capsys):
    with pytest.raises(SystemExit):
        run_demo.parse_args(["--fast", "--long"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_every_profile_layer_is_a_bundle_config(run_demo):
    for profile in run_demo.PROFILES.values():
        assert all((REPO_ROOT / f).is_file() for f in (*profile.layers, profile.preprocess))


@pytest.mark.parametrize("profile", ["demo", "fast", "long"])
def test_each_profile_trains_with_its_layers_into_its_own_run_folder(run_demo, monkeypatch, tmp_path, profile):
    calls, steps = [], []
    monkeypatch.setattr(run_demo, "synth", lambda *a, **k: 0)
    monkeypatch.setattr(run_demo, "pivot", lambda argv: steps.append(list(argv)) or 0)
    monkeypatch.setattr(run_demo.subprocess, "call", lambda cmd: calls.append(list(cmd)) or 0)
    evaluated = {}
    monkeypatch.setattr(run_demo, "infer_and_evaluate", lambda *a, **k: evaluated.update(args=a, kwargs=k) or 0)
    assert run_demo.run(tmp_path, 10, 0, 2, profile=profile) == 0

    (cmd,) = calls
    layers = cmd[cmd.index("--config_file") + 1]
    fpr = next(s for s in steps if s[0] == "train-fpr")
    prep = next(s for s in steps if s[0] == "preprocess")
    # preprocessing reads the profile's own spacing: demo_fast.yaml's 1.5 mm, demo.yaml's 1.25 mm
    fast = profile == "fast"
    assert prep[prep.index("--config") + 1] == f"bundle/configs/{'demo_fast' if fast else 'demo'}.yaml"
    models = {"demo": Path("bundle/models"), "fast": Path("bundle/models/demo_fast")}.get(profile)
    models = models or Path("bundle/models/cpu_long")
    results = tmp_path / ("results_cpu_long" if profile == "long" else "results")
    assert evaluated["kwargs"]["results"] == results
    if profile == "long":
        assert layers == "['bundle/configs/train.yaml','bundle/configs/demo.yaml','bundle/configs/cpu_long.yaml']"
        assert cmd[cmd.index("--checkpointing#dir") + 1] == str(models)
        assert "--config" not in fpr  # make demo's classifier (fpr.yaml)
        assert evaluated["kwargs"]["metadata"] is None
    elif fast:
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
