from __future__ import annotations

import numpy as np
import pytest
import torch

from pivot_monai.data.geometry import Geometry
from pivot_monai.inference.decode import DecodeSettings, candidates_to_world, decode_peaks, output_to_input_index
from pivot_monai.transforms.targets import gaussian_heatmap
from tests.conftest import FLIP_Z


def test_peaks_are_found_refined_and_sorted():
    first = gaussian_heatmap((30, 30, 30), np.array([[10.3, 12.0, 8.0]]), np.array([2.0]))
    heat = np.maximum(first, 0.6 * gaussian_heatmap((30, 30, 30), np.array([[22.0, 20.0, 19.6]]), np.array([2.0])))
    out = decode_peaks(torch.as_tensor(heat), settings=DecodeSettings(score_threshold=0.1))
    assert len(out["score"]) == 2 and out["score"][0] > out["score"][1]
    np.testing.assert_allclose(out["index"][0], [10.3, 12.0, 8.0], atol=0.15)
    np.testing.assert_allclose(out["index"][1], [22.0, 20.0, 19.6], atol=0.15)


def test_threshold_cap_and_merge():
    rng = np.random.default_rng(0)
    heat = torch.as_tensor(rng.uniform(0, 1, (20, 20, 20)).astype(np.float32))
    capped = decode_peaks(heat, settings=DecodeSettings(score_threshold=0.0, max_candidates=7, merge_radius=False))
    assert len(capped["score"]) == 7
    assert np.all(np.diff(capped["score"]) <= 0)
    high = decode_peaks(heat, settings=DecodeSettings(score_threshold=0.9, merge_radius=False))
    assert np.all(high["score"] >= 0.9)
    two = torch.zeros(20, 20, 20)
    two[5, 5, 5], two[5, 5, 8] = 0.9, 0.8  # 3 voxels apart, both local maxima (kernel 3)
    merged = decode_peaks(two, torch.full((20, 20, 20), 8.0), settings=DecodeSettings(score_threshold=0.1))
    assert len(merged["score"]) == 1 and merged["score"][0] == pytest.approx(0.9)
    apart = decode_peaks(
        two, torch.full((20, 20, 20), 2.0), settings=DecodeSettings(score_threshold=0.1, min_merge_mm=1.0)
    )
    assert len(apart["score"]) == 2


def test_empty_heatmap_gives_no_candidates():
    out = decode_peaks(torch.zeros(1, 8, 8, 8))
    assert out["index"].shape == (0, 3) and len(out["score"]) == 0


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_output_stride_maps_back_to_block_centres(stride):
    assert output_to_input_index(np.array([[0.0, 1.0, 2.0]]), stride).tolist() == [
        [(stride - 1) / 2, stride + (stride - 1) / 2, 2 * stride + (stride - 1) / 2]
    ]


def test_world_mapping_on_anisotropic_flipped_geometry():
    geom = Geometry((-120.5, 33.0, -210.0), (1.5, 1.5, 2.0), FLIP_Z, (40, 40, 30))
    idx = np.array([[3.25, 7.5, 11.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(candidates_to_world(idx, geom.index_to_world_matrix), geom.index_to_world(idx))
    np.testing.assert_allclose(candidates_to_world(idx, geom.index_to_world_matrix)[1], geom.origin)


def test_settings_validation_and_from_config():
    with pytest.raises(ValueError, match="nms_kernel"):
        DecodeSettings(nms_kernel=2)
    s = DecodeSettings.from_config({"score_threshold": 0.2, "overlap": 0.5, "max_candidates": 50})
    assert s.score_threshold == 0.2 and s.max_candidates == 50
