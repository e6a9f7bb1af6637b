"""Tests for pivot_monai.inference.predictor: the Predictor over any loaded detector, built from InferenceSettings."""

from __future__ import annotations

import pytest
import torch

from pivot_monai.inference.predictor import Predictor
from pivot_monai.inference.settings import InferenceSettings
from pivot_monai.networks import build_network


def _settings(**inference) -> InferenceSettings:
    sections = {"data": {"patch_size": [16, 16, 16]}, "model": {"depth": 2}, "inference": inference}
    return InferenceSettings.from_config(sections, device="cpu")


def test_maps_cover_the_volume_at_the_output_stride():
    torch.manual_seed(0)
    net = build_network({"base_filters": 4, "depth": 2, "output_stride": 2}).eval()
    out = Predictor.from_settings(net, _settings())(torch.rand(20, 24, 18))
    assert set(out) == {"heatmap", "diameter", "malignancy"}
    assert tuple(out["heatmap"].shape) == (1, 1, 10, 12, 9) and out["heatmap"].dtype == torch.float32


def test_from_settings_takes_the_window_overlap_and_tta_of_the_settings():
    net = build_network({"base_filters": 4, "depth": 2}).eval()
    settings = _settings(overlap=0.5, sw_batch_size=3, tta={"enabled": True, "num_augmentations": 2})
    p = Predictor.from_settings(net, settings)
    assert p.roi_size == (16, 16, 16) and p.overlap == 0.5 and p.sw_batch_size == 3
    assert p.tta.names[:2] == ["identity", "flip_x"] and p.multiple == 4


def test_a_checkpoint_path_is_loaded_and_prepared_for_the_host(tmp_path):
    torch.manual_seed(0)
    net = build_network({"base_filters": 4, "depth": 2, "batch_norm": True}).eval()
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    settings = InferenceSettings.from_config(
        {"data": {"patch_size": [16, 16, 16]}, "model": {"base_filters": 4, "depth": 2, "batch_norm": True}}
    )
    p = Predictor.from_settings(path, settings)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in p.network.modules())  # folded
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(p(x)["heatmap"], Predictor(net, (16, 16, 16))(x)["heatmap"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "inference, match",
    [({"overlap": 1.0}, "inference.overlap"), ({"sw_batch_size": 0}, "inference.sw_batch_size"),
     ({"blend_mode": "max"}, "inference.blend_mode")],
)  # fmt: skip
def test_bad_window_settings_name_their_key(inference, match):
    with pytest.raises(ValueError, match=match):
        _settings(**inference)


def test_a_bad_input_shape_is_refused():
    p = Predictor(build_network({"base_filters": 4, "depth": 2}).eval(), (16, 16, 16))
    with pytest.raises(ValueError, match=r"\(1, 1, X, Y, Z\)"):
        p(torch.rand(2, 16, 16, 16))
