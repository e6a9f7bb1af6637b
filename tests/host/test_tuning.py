"""Tests for pivot_monai.host: HostTuning from the device section, and no process state changed on import."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pivot_monai.host import HostTuning, forward_context
from tests.conftest import REPO_ROOT


def test_from_config_reads_the_device_section_and_defaults_the_rest():
    tuning = HostTuning.from_config({"num_threads": 2, "reuse_freed_memory": False}, torch.device("cpu"))
    assert tuning.num_threads == 2 and tuning.reuse_freed_memory is False
    assert tuning.on_cpu and not HostTuning.from_config(None, "cuda:0").on_cpu


@pytest.mark.parametrize("section", [{"num_threads": 0}, {"num_threads": "2"}, {"reuse_freed_memory": "yes"}])
def test_bad_values_name_the_device_key(section):
    with pytest.raises(ValueError, match=f"device.{next(iter(section))}"):
        HostTuning.from_config(section)


def test_importing_the_package_sets_no_omp_policy():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, pivot_monai, pivot_monai.host, pivot_monai.cli; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "None", out.stderr[-500:]


def test_prepare_network_folds_batch_norm_and_leaves_scripted_models_alone():
    from pivot_monai.networks import build_network

    net = build_network({"base_filters": 4, "depth": 2, "batch_norm": True}).eval()
    HostTuning().prepare_network(net)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())
    train = build_network({"base_filters": 4, "depth": 2, "batch_norm": True}).train()
    HostTuning().prepare_network(train)  # a training network keeps its batch norms
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in train.modules())


def test_forward_context_is_a_no_op_off_the_cpu():
    with forward_context(torch.device("cuda", 0)) as ctx:
        assert ctx is None
