"""Mixed-precision inference: which autocast the config and flags select, and that it reaches the network."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from pivot_monai.cli import main as pivot_main
from pivot_monai.inference.predictor import Predictor
from pivot_monai.inference.settings import inference_autocast
from pivot_monai.metrics import read_submission_csv
from pivot_monai.networks import build_network
from tests.inference.conftest import tricky_geometries

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")


@pytest.mark.parametrize(
    "device, cfg, amp, native, expected",
    [
        (CUDA, {"mixed_precision": True}, None, False, (True, torch.float16)),  # train.yaml's default on a GPU
        (CUDA, {"mixed_precision": True, "amp_dtype": "bfloat16"}, None, False, (True, torch.bfloat16)),
        (CUDA, {"mixed_precision": False}, None, True, (False, torch.float16)),
        (CUDA, {"mixed_precision": True}, False, False, (False, torch.float16)),  # --no-amp
        (CUDA, None, None, True, (False, torch.float16)),  # no device section: float32, as before
        (CPU, {"mixed_precision": True}, None, False, (False, torch.bfloat16)),  # float32 on every CPU ...
        (CPU, {"mixed_precision": True}, None, True, (False, torch.bfloat16)),  # ... AMX too, unless asked
        (CPU, {"mixed_precision": False}, None, True, (False, torch.bfloat16)),
        (CPU, {"mixed_precision": True}, False, True, (False, torch.bfloat16)),  # --no-amp
        (CPU, {"mixed_precision": True, "force_cpu_amp": True}, None, False, (True, torch.bfloat16)),
        (CPU, {"mixed_precision": False, "amp_dtype": "float16"}, True, False, (True, torch.bfloat16)),  # --amp
    ],
)
def test_inference_autocast_follows_the_device_section_the_cpu_and_the_flag(device, cfg, amp, native, expected):
    assert inference_autocast(device, cfg, amp, native_bf16=native) == expected


def test_amp_flag_on_cpu_warns_unless_bf16_is_native_and_a_bad_dtype_names_the_key(caplog):
    with caplog.at_level(logging.WARNING):
        inference_autocast(CPU, {}, True, native_bf16=True)
    assert "emulated" not in caplog.text
    with caplog.at_level(logging.WARNING):
        inference_autocast(CPU, {}, True, native_bf16=False)
    assert "emulated" in caplog.text
    with pytest.raises(ValueError, match="device.amp_dtype"):
        inference_autocast(CUDA, {"mixed_precision": True, "amp_dtype": "float8"})


class _Recorder(torch.nn.Module):
    """Wraps a network and records whether each forward ran under CPU autocast, and in which dtype."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x: torch.Tensor):
        self.seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return self.net(x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_predictor_runs_the_network_under_autocast_and_returns_float32_maps(dtype):
    torch.manual_seed(0)
    net = build_network({"base_filters": 4, "depth": 2}).eval()
    x = torch.rand(1, 1, 36, 28, 20)
    ref = Predictor(_Recorder(net), (16, 16, 16), output_stride=1)(x)
    rec = _Recorder(net)
    out = Predictor(rec, (16, 16, 16), output_stride=1, autocast=True, autocast_dtype=dtype)(x)
    assert rec.seen and set(rec.seen) == {dtype}
    for key, value in out.items():
        assert value.dtype == torch.float32 and value.shape == ref[key].shape
    np.testing.assert_allclose(out["heatmap"], ref["heatmap"], atol=2e-2)  # half precision, not garbage
    assert not torch.equal(out["heatmap"], ref["heatmap"])


@pytest.mark.parametrize("flag", [[], ["--amp"]])
def test_pivot_infer_amp_flag_reaches_the_predictor(make_raw_dataset, tiny_checkpoint, tiny_config, tmp_path, flag):
    root, truth = make_raw_dataset(dict(list(tricky_geometries().items())[:1]))
    out = tmp_path / "out"
    argv = ["--checkpoint", str(tiny_checkpoint), "--input", str(root), "--output", str(out)]
    argv += ["--config", str(tiny_config(score_threshold=0.0)), "--device", "cpu", *flag]
    assert pivot_main(["infer", *argv]) == 0
    report = json.loads((out / "infer_report.json").read_text())
    # train.yaml: mixed_precision true, which a CPU ignores unless force_cpu_amp; --amp turns bf16 autocast on
    assert report["settings"]["autocast"] == ("bfloat16" if flag else None)
    assert set(read_submission_csv(out / "candidates.csv")) == set(truth)
