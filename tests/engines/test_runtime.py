from __future__ import annotations

import logging
import math

import pytest
import torch
from monai.inferers import SimpleInferer

from pivot_monai.engines.runtime import AutocastInferer, amp_dtype, select_device, use_amp, use_cpu_autocast
from tests.conftest import TINY_OVERRIDES

HAS_CUDA = torch.cuda.is_available()


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU fallback")
def test_unavailable_cuda_falls_back_to_cpu_or_errors_when_strict(caplog):
    assert select_device("cuda") == torch.device("cpu")
    assert "falling back to CPU" in caplog.text
    with pytest.raises(RuntimeError, match="device.strict"):
        select_device("cuda", strict=True)
    with pytest.raises(ValueError, match="device.type"):
        select_device("tpu")


def test_amp_is_off_on_cpu_unless_forced(caplog):
    caplog.set_level(logging.INFO)
    cpu = torch.device("cpu")
    assert use_amp(cpu, True) is False and "bf16 autocast is slow" in caplog.text
    assert use_cpu_autocast(cpu, True, False) is False
    assert use_cpu_autocast(cpu, True, True) is True
    assert use_amp(torch.device("cuda", 0), True) is True
    assert amp_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="amp_dtype"):
        amp_dtype("float8")


def test_autocast_inferer_runs_in_bf16_and_returns_float32():
    seen = {}

    def net(x):
        y = torch.nn.functional.linear(x, torch.ones(3, 4))
        seen["dtype"] = y.dtype
        return {"heatmap": y}

    out = AutocastInferer(SimpleInferer(), enabled=True)(torch.rand(2, 4), net)
    assert seen["dtype"] == torch.bfloat16 and out["heatmap"].dtype == torch.float32
    AutocastInferer(SimpleInferer(), enabled=False)(torch.rand(2, 4), net)
    assert seen["dtype"] == torch.float32


def test_forced_cpu_amp_trains(tiny_processed, tmp_path):
    from tests.bundle.test_training_features import _workflow as workflow

    wf = workflow(
        tiny_processed, tmp_path, **{"training#epochs": 1, "device#mixed_precision": True, "device#force_cpu_amp": True}
    )
    assert wf.parser.get_parsed_content("device#cpu_autocast") is True
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    wf.finalize()
    assert trainer.state.epoch == 1 and math.isfinite(float(trainer.state.output[0]["loss"]))
    assert TINY_OVERRIDES


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_device_from_local_rank(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert select_device("cuda") == torch.device("cuda", 0)
