"""The GPU benchmark's arms, run on the CPU so that they work the day a GPU is lent (issue #7)."""

from __future__ import annotations

import json
import math

import pytest


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    """Benchmark JSON goes to a temporary folder, not over the real ``benchmarks/results``."""
    from benchmarks import common

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    return tmp_path


@pytest.mark.slow
def test_bench_gpu_arms_run_on_cpu_with_autocast_on_and_off(results_dir):
    from benchmarks import bench_gpu

    rows = bench_gpu.main(["--quick", "--device", "cpu"])
    metrics = {r.metric.split(" [")[0]: r for r in rows}
    for name in ("inference s/scan, AMP on vs off", "inference network s/scan, AMP on vs off",
                 "training patches/s, AMP on vs off"):  # fmt: skip
        row = metrics[name]
        assert row.value > 0 and row.baseline > 0 and math.isfinite(row.ratio)
    result = json.loads((results_dir / "gpu.json").read_text())
    runs = result["details"]["demo"]["inference"]
    assert {r["autocast"] for r in runs["amp_on"]} == {"torch.bfloat16"}  # on a CPU, autocast is bf16
    assert {r["autocast"] for r in runs["amp_off"]} == {None}


def test_bench_gpu_without_cuda_writes_one_skipped_row(monkeypatch, results_dir):
    import torch

    from benchmarks import bench_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rows = bench_gpu.main([])
    assert [r.metric for r in rows] == ["skipped: no CUDA GPU on this machine"] and rows[0].passed is None
    assert json.loads((results_dir / "gpu.json").read_text())["rows"][0]["value"] is None
