from __future__ import annotations

import logging
import math
import platform
import subprocess
import sys

import pytest
import torch
from monai.inferers import SimpleInferer

from pivot_monai.engines.runtime import (
    AutocastInferer,
    amp_dtype,
    select_device,
    use_amp,
    use_cpu_autocast,
)
from pivot_monai.host import allocator
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
    assert wf.parser.get_parsed_content("device#autocast_dtype") is torch.bfloat16  # not train.yaml's float16
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


_REALLOC_SCRIPT = """
import resource, sys, torch
if sys.argv[1] == "on":
    from pivot_monai.host.allocator import reuse_freed_memory
    assert reuse_freed_memory() is True
faults = []
for _ in range(24):  # a 64 MB activation-sized block, allocated, written and freed, as each forward does
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 * 1024 * 1024).fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[-8:]))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc mallopt")
def test_reuse_freed_memory_serves_a_reallocated_block_without_page_faults():
    # a fresh process each: the setting is process-wide and would change the rest of this test session. The heap
    # takes a few rounds to hold enough free space for torch's aligned blocks (it grew to ~9 blocks here), so the
    # last rounds are compared
    faults = {
        mode: int(subprocess.run([sys.executable, "-c", _REALLOC_SCRIPT, mode], check=True, capture_output=True,
                                 text=True).stdout.split()[-1])
        for mode in ("off", "on")
    }  # fmt: skip
    assert faults["off"] > 0  # glibc mmaps each 64 MB block afresh: every round faults its pages in again
    assert faults["on"] * 10 < faults["off"]  # the freed block is reused from the heap


def test_reuse_freed_memory_is_a_no_op_when_disabled_or_off_glibc(monkeypatch):
    from pivot_monai.host.allocator import reuse_freed_memory

    assert reuse_freed_memory(False) is False
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert reuse_freed_memory(True) is False


def test_select_device_applies_reuse_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda enabled=True: calls.append(enabled) or True)
    select_device("cpu")
    assert calls == []
    select_device("cpu", reuse_memory=True)
    assert calls == [True]


def test_bundle_device_section_passes_reuse_freed_memory(monkeypatch):
    from monai.bundle import ConfigParser

    from pivot_monai.config import default_config_path

    calls = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda enabled=True: calls.append(enabled) or True)
    parser = ConfigParser()
    parser.read_config(str(default_config_path()))
    assert parser["device"]["reuse_freed_memory"] is True
    parser["device"]["type"] = "cpu"
    assert parser.get_parsed_content("device#torch_device") == torch.device("cpu") and calls == [True]
    parser["device"]["reuse_freed_memory"] = False
    parser.parse()
    parser.get_parsed_content("device#torch_device", instantiate=True, lazy=False)
    assert calls == [True]


@pytest.mark.parametrize(
    "caps, expected",
    [({"avx2": True}, False), ({"avx512_bf16": True}, True), ({"amx_bf16": True, "avx2": True}, True), ({}, False)],
)
def test_cpu_has_native_bf16_reads_the_cpu_capabilities(monkeypatch, caps, expected):
    from pivot_monai.host import cpu_has_native_bf16

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert cpu_has_native_bf16() is expected


def test_autocast_dtype_is_the_configured_one_on_cuda_and_bf16_on_cpu():
    from pivot_monai.engines.runtime import autocast_dtype

    assert autocast_dtype(torch.device("cuda", 0), "float16") is torch.float16
    assert autocast_dtype(torch.device("cuda", 0), "bf16") is torch.bfloat16
    assert autocast_dtype(torch.device("cpu"), "float16") is torch.bfloat16
    with pytest.raises(ValueError, match="device.amp_dtype"):
        autocast_dtype(torch.device("cpu"), "float8")


def test_validation_inference_shows_no_monai_indexing_warning_but_other_warnings_pass():
    import warnings

    from monai.inferers import SlidingWindowInferer

    from pivot_monai.engines.runtime import MONAI_INDEXING_WARNING

    def network(x):
        warnings.warn("a warning of the user's own network", UserWarning, stacklevel=1)
        return x

    x = torch.zeros(1, 1, 20, 20, 20)
    with warnings.catch_warnings(record=True) as bare:
        warnings.simplefilter("always")
        SlidingWindowInferer((8, 8, 8), sw_batch_size=2)(x, network)
    assert any(MONAI_INDEXING_WARNING in str(w.message) for w in bare)  # MONAI triggers it without the wrapper
    with warnings.catch_warnings(record=True) as wrapped:
        warnings.simplefilter("always")
        AutocastInferer(SlidingWindowInferer((8, 8, 8), sw_batch_size=2))(x, network)
    messages = {str(w.message) for w in wrapped}
    assert not any(MONAI_INDEXING_WARNING in m for m in messages)
    assert messages == {"a warning of the user's own network"}
