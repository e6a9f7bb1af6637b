"""Packaging: weights are never committed, and a wheel carries the bundle so an installed ``pivot`` runs anywhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch

from pivot_monai.networks import build_network
from pivot_monai.networks.checkpoint import save_model
from pivot_monai.networks.metadata import describe_model
from tests.conftest import REPO_ROOT
from tests.inference.conftest import TINY_DATA, TINY_INFERENCE, tricky_geometries

WEIGHT_SUFFIXES = (".pt", ".pth", ".ts", ".onnx", ".torchscript")


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("git") is None or not (REPO_ROOT / ".git").exists(), reason="not a git checkout")
def test_weights_are_never_committed_and_always_ignored():
    tracked = _git("ls-files").stdout.split()
    assert not [p for p in tracked if p.endswith(WEIGHT_SUFFIXES)]
    paths = ["bundle/models/model.pt", "runs/demo/20250101-120000/model_best.pt", "exports/model.ts", "a/model.onnx"]
    ignored = _git("check-ignore", *paths).stdout.split()
    assert ignored == paths


def _source_tree(dest: Path) -> Path:
    """The files git tracks, copied from the working tree (what a clone would build; the build writes there)."""
    listed = _git("ls-files").stdout.split() if (REPO_ROOT / ".git").exists() else []
    if not listed:
        return REPO_ROOT
    for name in listed:
        if (REPO_ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, dest / name)
    return dest


def _wheel(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    source = _source_tree(out.parent / "source")
    # --no-build-isolation: the environment's setuptools, no download
    cmd = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=out)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (wheel,) = out.glob("pivot_monai-*.whl")
    return wheel


@pytest.mark.slow
def test_an_installed_wheel_runs_pivot_infer_outside_the_checkout(make_raw_dataset, tmp_path):
    wheel = _wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("train.yaml", "inference.yaml", "evaluate.yaml", "fpr.yaml", "metadata.json", "logging.conf"):
        assert f"pivot_monai/_bundle/configs/{name}" in names, name
    # a fresh venv; torch, MONAI and the other dependencies come from this environment's site-packages (.pth)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "_pivot_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)]
    assert subprocess.run(install, capture_output=True, text=True, timeout=600).returncode == 0

    torch.manual_seed(0)
    model = tmp_path / "model" / "model.pt"
    net = {"base_filters": 4, "depth": 2, "output_stride": 2}
    sections = {"model": net, "data": TINY_DATA, "inference": {**TINY_INFERENCE, "score_threshold": 0.0}}
    save_model(model, build_network(net).state_dict(), describe_model(sections, run_id="wheel-test"))
    root, _ = make_raw_dataset(dict(list(tricky_geometries().items())[:1]))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run(
        [str(python), "-c", "import pivot_monai.config as c; print(c.default_config_path())"],
        cwd=outside, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    config_path = Path(where.stdout.strip())
    assert config_path.is_file() and REPO_ROOT not in config_path.parents, where.stdout + where.stderr
    run = subprocess.run(
        [str(venv / "bin" / "pivot"), "infer", "--checkpoint", str(model), "-i", str(root), "-o", "out"],
        cwd=outside, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "built-in defaults" not in log
    report = json.loads((outside / "out" / "infer_report.json").read_text())
    assert report["ok"] and (outside / "out" / "candidates.csv").read_text().count("\n") > 1
