"""Correlated CT noise and nodule-contrast augmentation, and how the augmentation section builds them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import RandGaussianNoised

from pivot_monai.transforms.appearance import RandCorrelatedNoised, RandLesionContrastd
from pivot_monai.transforms.augment import build_augmentation


def _neighbour_correlation(noise: np.ndarray) -> float:
    a, b = noise[:, :-1].ravel(), noise[:, 1:].ravel()
    return float(np.corrcoef(a, b)[0, 1])


def _added_noise(sigma: float, std: float = 0.05) -> np.ndarray:
    t = RandCorrelatedNoised("image", prob=1.0, std=std, sigma_range=(sigma, sigma))
    t.set_random_state(3)
    return t({"image": torch.zeros(1, 32, 32, 32)})["image"][0].numpy()


def test_correlated_noise_has_grain_and_white_noise_has_none():
    assert _neighbour_correlation(_added_noise(1.2)) > 0.6
    assert abs(_neighbour_correlation(_added_noise(0.0))) < 0.05


def test_correlated_noise_strength_is_drawn_up_to_std_and_seeded():
    stds = []
    for seed in range(20):
        t = RandCorrelatedNoised("image", prob=1.0, std=0.04, sigma_range=(0.5, 1.0))
        t.set_random_state(seed)
        stds.append(float(t({"image": torch.zeros(1, 16, 16, 16)})["image"].std()))
    assert max(stds) <= 0.04 + 1e-6 and min(stds) < 0.02  # dose varies: deviations spread over [0, std]
    again = RandCorrelatedNoised("image", prob=1.0, std=0.04, sigma_range=(0.5, 1.0))
    again.set_random_state(0)
    assert float(again({"image": torch.zeros(1, 16, 16, 16)})["image"].std()) == pytest.approx(stds[0])


def test_correlated_noise_with_a_fixed_deviation_and_mean():
    t = RandCorrelatedNoised("image", prob=1.0, std=0.03, sigma_range=(0.8, 0.8), mean=0.1, sample_std=False)
    t.set_random_state(0)
    out = t({"image": torch.zeros(1, 24, 24, 24)})["image"]
    assert float(out.std()) == pytest.approx(0.03, rel=1e-3) and float(out.mean()) == pytest.approx(0.1, abs=5e-3)


def test_correlated_noise_at_probability_zero_leaves_the_image():
    img = torch.rand(1, 8, 8, 8)
    out = RandCorrelatedNoised("image", prob=0.0, std=0.1)({"image": img})["image"]
    assert torch.equal(out, img)


def _nodule_crop(value: float = 0.6, lung: float = 0.1) -> dict[str, torch.Tensor]:
    img = torch.full((1, 40, 40, 40), lung)
    lab = torch.zeros(1, 40, 40, 40)
    img[:, 16:24, 16:24, 16:24] = value
    lab[:, 16:24, 16:24, 16:24] = 1
    img[:, 34:38, 2:6, 2:6] = 0.9  # far from the nodule: must not change
    return {"image": img, "label": lab}


@pytest.mark.parametrize("factor", [0.5, 1.2])
def test_lesion_contrast_scales_the_nodule_against_its_lung(factor):
    d = _nodule_crop()
    out = RandLesionContrastd("image", "label", prob=1.0, factor_range=(factor, factor))(d)
    centre = float(out["image"][0, 20, 20, 20])
    assert centre == pytest.approx(0.1 + factor * 0.5, abs=0.02)
    assert torch.equal(out["image"][:, 34:38, 2:6, 2:6], d["image"][:, 34:38, 2:6, 2:6])
    assert torch.equal(out["label"], d["label"])  # the targets still come from the same nodule


def test_lesion_contrast_draws_a_factor_per_nodule_and_ignores_crops_without_one():
    d = _nodule_crop()
    d["image"][:, 2:8, 30:36, 30:36] = 0.6
    d["label"][:, 2:8, 30:36, 30:36] = 2
    t = RandLesionContrastd("image", "label", prob=1.0, factor_range=(0.3, 1.3))
    t.set_random_state(1)
    out = t(d)["image"]
    assert float(out[0, 20, 20, 20]) != pytest.approx(float(out[0, 5, 33, 33]), abs=1e-3)
    empty = {"image": torch.rand(1, 12, 12, 12), "label": torch.zeros(1, 12, 12, 12)}
    assert torch.equal(t(empty)["image"], empty["image"])


def test_augmentation_section_builds_the_appearance_transforms():
    out = build_augmentation(
        {"noise": {"prob": 0.5, "std": 0.04, "texture_sigma": [0.0, 1.0]}, "lesion_contrast": {"prob": 0.3}}
    )
    by_type = {type(t): t for t in out}
    assert by_type[RandLesionContrastd].prob == 0.3
    assert by_type[RandCorrelatedNoised].sigma_range == (0.0, 1.0)
    assert out.index(by_type[RandLesionContrastd]) < out.index(by_type[RandCorrelatedNoised])  # noise on top
    white = build_augmentation({"noise": {"prob": 0.5, "std": 0.04, "texture_sigma": [0.0, 0.0]}})
    assert isinstance(white[0], RandGaussianNoised)


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"noise": {"prob": 0.5, "texture_sigma": [1.0, 0.5]}}, "augmentation.noise.texture_sigma"),
        ({"noise": {"prob": 0.5, "grain": 1.0}}, "augmentation.noise: unknown key"),
        ({"lesion_contrast": {"prob": 0.5, "factor_range": [0.0, 1.0]}}, "augmentation.lesion_contrast.factor_range"),
        ({"lesion_contrast": {"prob": 2.0}}, "augmentation.lesion_contrast.prob"),
    ],
)
def test_bad_appearance_values_name_the_key(cfg, key):
    with pytest.raises(ValueError, match=key):
        build_augmentation(cfg)
