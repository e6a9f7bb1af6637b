"""Fixtures of the inference tests: an "oracle" detector, tiny configs and tricky scan geometries.

The oracle stands in for a trained network: its heatmap is a Gaussian-blurred threshold of bright tissue surrounded by
lung, so the phantoms of ``tests/conftest.py`` go through the whole pipeline -- preprocessing, sliding window, peak
decoding and the world mapping -- with a known answer.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from pivot_monai.data.geometry import Geometry
from pivot_monai.networks import build_network
from tests.conftest import FLIP_Z, oblique_direction

# processed intensities: HU window [-1000, 400] -> [0, 1]; lung (-850 HU) ~ 0.11, solid tissue (30..40 HU) ~ 0.74
TINY_DATA = {
    "target_spacing": [1.5, 1.5, 1.5],
    "hu_window": [-1000, 400],
    "lung_crop": {"enabled": True, "margin_mm": 6},
    "patch_size": [32, 32, 32],
}
TINY_MODEL = {"base_filters": 4, "depth": 2, "output_stride": 1}
TINY_INFERENCE = {
    "overlap": 0.25,
    "sw_batch_size": 4,
    "blend_mode": "gaussian",
    "score_threshold": 0.05,
    "nms_kernel": 3,
    "max_candidates": 100,
    "merge_radius": True,
}


class OracleNet(nn.Module):
    """Heatmap = blurred mask of bright voxels whose neighbourhood is mostly lung; constant diameter/malignancy.

    With ``stride`` > 1 the maps are max-pooled to ``1 / stride`` of the input, as a network with
    ``model.output_stride`` learns them from max-pooled targets (each output voxel covers a ``stride^3`` block).
    """

    def __init__(
        self, diameter_mm: float = 8.0, malignancy: float = 0.7, sigma: float = 1.0, radius: int = 4, stride: int = 1
    ) -> None:
        super().__init__()
        self.stride = int(stride)
        half = int(math.ceil(3 * sigma))
        g = torch.exp(-0.5 * (torch.arange(-half, half + 1, dtype=torch.float32) / sigma) ** 2)
        g = g / g.sum()
        self.register_buffer("kernel", (g[:, None, None] * g[None, :, None] * g[None, None, :])[None, None])
        self.half = half
        self.radius = radius
        self.diameter_mm = float(diameter_mm)
        self.malignancy = float(malignancy)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        lung = (x < 0.3).float()
        frac = F.avg_pool3d(lung, 2 * self.radius + 1, stride=1, padding=self.radius, count_include_pad=False)
        tissue = (x > 0.6).float() * (frac > 0.6).float()
        heat = F.conv3d(tissue, self.kernel, padding=self.half).clamp(0.0, 1.0)
        if self.stride > 1:
            heat = F.max_pool3d(heat, self.stride)
        return {
            "heatmap": heat,
            "diameter": torch.full_like(heat, self.diameter_mm),
            "malignancy": torch.full_like(heat, self.malignancy),
        }


def tricky_geometries() -> dict[str, Geometry]:
    """Anisotropic spacing and non-zero origins; one scan with a flipped z axis, one oblique (~100 mm fields)."""
    return {
        "1.3.6.aniso": Geometry((-172.3, -145.8, -312.5), (1.4, 1.4, 2.5), np.eye(3), (72, 68, 40)),
        "1.3.6.flipz": Geometry((-80.0, 60.0, -40.0), (1.2, 1.2, 2.0), FLIP_Z, (84, 80, 50)),
        "1.3.6.oblique": Geometry((20.0, -30.0, 100.0), (1.3, 1.3, 1.8), oblique_direction(12.0), (78, 74, 56)),
    }


@pytest.fixture
def oracle() -> OracleNet:
    return OracleNet().eval()


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    """A random-weight tiny PivotDetector saved as training does (bare state_dict)."""
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.save(build_network(TINY_MODEL).state_dict(), path)
    return path


@pytest.fixture
def tiny_config(tmp_path):
    """Write a minimal user config (merged over train.yaml by the CLI); returns a writer taking inference overrides."""

    def _write(**inference) -> Path:
        path = tmp_path / "tiny.yaml"
        cfg = {"data": TINY_DATA, "model": TINY_MODEL, "inference": {**TINY_INFERENCE, **inference}}
        path.write_text(yaml.safe_dump(cfg))
        return path

    return _write


def tiny_settings(data=None, inference=None, model=None, device_cfg=None, **flags):
    """``InferenceSettings`` of the tiny configs on the CPU (``flags``: the command-line flags)."""
    from pivot_monai.inference.settings import InferenceSettings

    sections = {"data": data or TINY_DATA, "model": model or {}, "inference": inference or TINY_INFERENCE}
    sections["device"] = device_cfg or {}
    return InferenceSettings.from_config(sections, device=flags.pop("device", "cpu"), **flags)
