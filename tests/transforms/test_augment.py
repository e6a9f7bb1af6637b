"""The augmentation section as MONAI transforms, including the scanner-variation ones (intensity, kernels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import (
    RandGaussianNoised,
    RandGaussianSharpend,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from pivot_monai.transforms.augment import build_augmentation


def test_scanner_sections_build_their_transforms_with_the_given_probabilities():
    cfg = {
        "intensity": {"prob": 0.3, "shift": 0.03, "scale": 0.05},
        "smooth": {"prob": 0.2, "sigma_range": [0.25, 0.75]},
        "sharpen": {"prob": 0.1, "alpha_range": [1.0, 3.0]},
        "noise": {"prob": 0.4, "std": 0.04},
    }
    out = build_augmentation(cfg)
    by_type = {type(t): t for t in out}
    assert by_type[RandShiftIntensityd].prob == 0.3 and by_type[RandScaleIntensityd].prob == 0.3
    assert by_type[RandGaussianSmoothd].prob == 0.2 and by_type[RandGaussianSharpend].prob == 0.1
    noise = by_type[RandGaussianNoised]
    assert noise.prob == 0.4 and noise.rand_gaussian_noise.sample_std  # dose varies: std drawn in [0, std]


def test_zero_probability_adds_nothing_and_bad_values_name_the_key():
    assert build_augmentation({"intensity": {"prob": 0.0}, "sharpen": {"prob": 0.0}, "flip": {"prob": 0}}) == []
    with pytest.raises(ValueError, match="augmentation.intensity.shift"):
        build_augmentation({"intensity": {"prob": 0.5, "shift": -1}})
    with pytest.raises(ValueError, match="augmentation.smooth.sigma_range"):
        build_augmentation({"smooth": {"prob": 0.5, "sigma_range": [0.8, 0.2]}})
    with pytest.raises(ValueError, match="unknown key"):
        build_augmentation({"blur": {"prob": 0.5}})


def test_sharpen_overshoots_an_edge_by_tens_to_a_few_hundred_hu():
    image = np.zeros((1, 32, 8, 8), np.float32)
    image[:, 16:] = (40 + 1000) / 1400  # soft tissue next to lung, as the [-1000, 400] window scales them
    image[:, :16] = (-880 + 1000) / 1400
    (sharpen,) = build_augmentation({"sharpen": {"prob": 1.0}})
    sharpen.set_random_state(0)
    hu = sharpen({"image": torch.tensor(image)})["image"][0, :, 4, 4].numpy() * 1400 - 1000
    assert 60 < hu.max() < 400 and hu.min() < -900
