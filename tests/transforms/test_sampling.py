"""NoduleCropSamplerd and StagedCenterSpatialCropd: crop counts, centres, curriculum, stages and worker processes."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset

from pivot_monai.transforms.hard_negatives import HardNegativePool
from pivot_monai.transforms.sampling import (
    NoduleCropSamplerd,
    StagedCenterSpatialCropd,
    crop_ratios,
    nodule_contrast,
    stochastic_round,
)
from pivot_monai.transforms.stages import Stage, StageState

SHAPE = (40, 36, 30)
BIG, SMALL = 1, 2  # label ids: a 4-voxel-wide (8 mm) and a 2-voxel-wide (3 mm) nodule


def _volume(with_nodules: bool = True) -> dict:
    """Image whose voxel values encode their flat index, an instance label and per-id diameters."""
    label = np.zeros((1, *SHAPE), dtype=np.float32)
    if with_nodules:
        label[0, 10:14, 10:14, 10:14] = BIG
        label[0, 28:30, 24:26, 18:20] = SMALL
    image = torch.arange(np.prod(SHAPE), dtype=torch.float32).reshape(1, *SHAPE)
    return {
        "image": image,
        "label": torch.as_tensor(label),
        "seriesuid": "scan-a",
        "nodule_diameters": np.array([0.0, 8.0, 3.0], dtype=np.float32),
    }


def _sampler(**kwargs) -> NoduleCropSamplerd:
    kwargs = {"keys": ["image", "label"], "spatial_size": (8, 8, 8), "num_samples": 4, **kwargs}
    sampler = NoduleCropSamplerd(**kwargs)
    sampler.set_random_state(0)
    return sampler


def _centre_value(crop: dict) -> int:
    """Flat index of the input voxel at the crop centre (the image encodes indices)."""
    size = crop["image"].shape[1:]
    return int(crop["image"][(0, *[s // 2 for s in size])])


def test_integer_expectations_give_exact_counts():
    pool = HardNegativePool(pool_size=4)
    pool.update("scan-a", [((30, 5, 5), 0.9), ((5, 30, 25), 0.8)])
    sampler = _sampler(num_samples=8, pos=1, neg=3, hard_ratio=0.5, pool=pool)
    for _ in range(20):
        kinds = collections.Counter(k for k, _ in sampler.plan(_volume()["label"][0].numpy(), None, "scan-a"))
        assert kinds == {"positive": 2, "hard_negative": 3, "negative": 3}


def test_fractional_expectations_are_met_on_average():
    pool = HardNegativePool(pool_size=4)
    pool.update("scan-a", [((30, 5, 5), 0.9)])
    sampler = _sampler(num_samples=2, pos=1, neg=3, hard_ratio=0.5, pool=pool)
    label = _volume()["label"][0].numpy()
    kinds = collections.Counter(k for _ in range(2000) for k, _ in sampler.plan(label, None, "scan-a"))
    assert kinds["positive"] / 4000 == pytest.approx(0.25, abs=0.03)
    assert kinds["hard_negative"] / (kinds["hard_negative"] + kinds["negative"]) == pytest.approx(0.5, abs=0.04)


def test_empty_pool_draws_like_rand_crop_by_pos_neg_label():
    sampler = _sampler(num_samples=1, pos=1, neg=2, hard_ratio=0.5, pool=HardNegativePool())
    label = _volume()["label"][0].numpy()
    kinds = collections.Counter(k for _ in range(1500) for k, _ in sampler.plan(label, None, "scan-a"))
    assert set(kinds) == {"positive", "negative"}  # no hard negatives without pooled entries for the scan
    assert kinds["positive"] / 1500 == pytest.approx(1 / 3, abs=0.04)


def test_crops_are_centred_on_nodules_hard_negatives_and_background():
    pool = HardNegativePool()
    pool.update("scan-a", [((30, 6, 7), 0.9)])
    sampler = _sampler(num_samples=8, pos=1, neg=1, hard_ratio=1.0, pool=pool)
    data = _volume()
    label = data["label"][0].numpy()
    for _ in range(10):
        for crop in sampler(data):
            centre = np.unravel_index(_centre_value(crop), SHAPE)
            assert tuple(crop["crop_center"]) == centre
            assert crop["image"].shape == (1, 8, 8, 8) and crop["label"].shape == (1, 8, 8, 8)
            if crop["crop_kind"] == "positive":
                assert label[centre] > 0
            elif crop["crop_kind"] == "hard_negative":
                assert centre == (30, 6, 7)
            else:
                assert label[centre] == 0


def test_nodule_free_volume_gives_only_negatives():
    sampler = _sampler(num_samples=6, pos=3, neg=1)
    crops = sampler(_volume(with_nodules=False))
    assert len(crops) == 6 and {c["crop_kind"] for c in crops} == {"negative"}


def test_min_diameter_keeps_small_nodules_out_of_positive_crops():
    state = StageState()
    sampler = _sampler(num_samples=4, pos=1, neg=0, stage=state)
    label = _volume()["label"][0].numpy()
    diameters = _volume()["nodule_diameters"]
    ids = {int(label[c]) for _ in range(300) for _, c in sampler.plan(label, diameters)}
    assert ids == {BIG, SMALL}
    state.apply(Stage(min_diameter=5.0))
    ids = {int(label[c]) for _ in range(300) for _, c in sampler.plan(label, diameters)}
    assert ids == {BIG}
    state.apply(Stage(min_diameter=10.0))  # no eligible nodule: every crop becomes a negative
    assert {k for k, _ in sampler.plan(label, diameters)} == {"negative"}


def test_static_min_diameter_without_a_stage():
    sampler = _sampler(num_samples=4, pos=1, neg=0, min_diameter=5.0)
    label, diameters = _volume()["label"][0].numpy(), _volume()["nodule_diameters"]
    assert {int(label[c]) for _ in range(200) for _, c in sampler.plan(label, diameters)} == {BIG}


def test_border_centres_move_inside_and_small_volumes_are_padded():
    pool = HardNegativePool()
    pool.update("scan-a", [((0, 0, 0), 0.9)])
    crop = _sampler(num_samples=1, pos=0, neg=1, hard_ratio=1.0, pool=pool)(_volume())[0]
    assert tuple(crop["crop_center"]) == (4, 4, 4) and crop["image"].shape == (1, 8, 8, 8)
    big = _sampler(spatial_size=(48, 40, 32), num_samples=2)(_volume())
    assert all(c["image"].shape == (1, 48, 40, 32) and c["label"].shape == (1, 48, 40, 32) for c in big)
    assert all(float(c["label"].max()) > 0 for c in big)  # the whole volume is inside the padded crop


def test_stage_patch_size_sets_crop_and_centre_crop_sizes():
    state = StageState()
    sampler = _sampler(stage=state, crop_margin=2)
    centre = StagedCenterSpatialCropd(["image", "label"], roi_size=(4, 4, 4), stage=state)
    crop = sampler(_volume())[0]
    assert crop["image"].shape == (1, 8, 8, 8) and centre(crop)["image"].shape == (1, 4, 4, 4)
    state.apply(Stage(patch_size=(12, 8, 16)))
    crop = sampler(_volume())[0]
    assert crop["image"].shape == (1, 16, 12, 20) and centre(crop)["image"].shape == (1, 12, 8, 16)


def test_crop_ratios_say_when_mining_replaces_pos_neg_ratio(caplog):
    with caplog.at_level("WARNING", logger="pivot_monai.transforms.sampling"):
        assert crop_ratios([1, 2], {"enabled": True, "neg_pos_ratio": 2}) == (1.0, 2.0, 0.5)
        assert crop_ratios([1, 1], {"enabled": True, "neg_pos_ratio": 3}) == (1.0, 3.0, 0.5)  # the default: silent
        assert not caplog.records
        assert crop_ratios([2, 1], {"enabled": True, "neg_pos_ratio": 1}) == (1.0, 1.0, 0.5)
    assert "data.pos_neg_ratio [2, 1] is not used" in caplog.text
    assert "training.hard_negative_mining.neg_pos_ratio = 1" in caplog.text


def test_crop_ratios_follow_the_mining_switch():
    assert crop_ratios([1, 1], {"enabled": False, "neg_pos_ratio": 3}) == (1.0, 1.0, 0.0)
    assert crop_ratios([1, 1], {"enabled": True, "neg_pos_ratio": 3, "batch_hard_ratio": 0.25}) == (1.0, 3.0, 0.25)
    with pytest.raises(ValueError, match="training.hard_negative_mining.batch_hard_ratio"):
        crop_ratios([1, 1], {"enabled": True, "batch_hard_ratio": 1.5})
    with pytest.raises(ValueError, match="data.pos_neg_ratio"):
        crop_ratios([0, 0])


def test_invalid_sampler_arguments_raise():
    with pytest.raises(ValueError, match="samples_per_volume"):
        _sampler(num_samples=0)
    with pytest.raises(ValueError, match="hard_ratio"):
        _sampler(hard_ratio=2.0)


def test_stochastic_round_is_exact_for_integers():
    rng = np.random.RandomState(0)
    assert {stochastic_round(3.0, rng) for _ in range(50)} == {3}
    assert np.mean([stochastic_round(0.3, rng) for _ in range(4000)]) == pytest.approx(0.3, abs=0.03)


def test_persistent_workers_see_pool_updates_through_the_file(tmp_path):
    pool = HardNegativePool(pool_size=2, path=tmp_path / "pool.json")
    sampler = NoduleCropSamplerd(
        ["image", "label"], spatial_size=(8, 8, 8), num_samples=4, pos=0, neg=1, hard_ratio=1.0, pool=pool
    )
    loader = DataLoader(Dataset([_volume()], transform=sampler), batch_size=1, num_workers=1, persistent_workers=True)
    first = next(iter(loader))
    pool.update("scan-a", [((20, 20, 20), 0.7)])
    pool.publish()  # the worker started before this update; it reads the file
    second = next(iter(loader))
    assert set(first["crop_kind"]) == {"negative"}
    assert set(second["crop_kind"]) == {"hard_negative"}
    assert second["crop_center"].tolist() == [[20, 20, 20]] * 4


def test_instance_sampling_draws_each_nodule_equally_and_voxel_sampling_by_its_volume():
    label, diameters = _volume()["label"][0].numpy(), _volume()["nodule_diameters"]
    counts = {}
    for mode in ("instance", "voxel"):
        sampler = _sampler(num_samples=4, pos=1, neg=0, positive_sampling=mode)
        ids = [int(label[c]) for _ in range(500) for _, c in sampler.plan(label, diameters)]
        counts[mode] = collections.Counter(ids)
    # 64 voxels (BIG) vs 8 voxels (SMALL): instance sampling 1:1, voxel sampling (RandCropByPosNegLabeld) 8:1
    assert counts["instance"][SMALL] / 2000 == pytest.approx(0.5, abs=0.04)
    assert counts["voxel"][SMALL] / 2000 == pytest.approx(8 / 72, abs=0.03)


def test_size_sampling_favours_small_nodules():
    label, diameters = _volume()["label"][0].numpy(), _volume()["nodule_diameters"]
    sampler = _sampler(num_samples=4, pos=1, neg=0, positive_sampling="size")
    ids = collections.Counter(int(label[c]) for _ in range(500) for _, c in sampler.plan(label, diameters))
    # weights 6/8 = 0.75 (8 mm) and min(6/3, 2) = 2 (3 mm): the small nodule gets 2 / 2.75 of the positive crops
    assert ids[SMALL] / 2000 == pytest.approx(2 / 2.75, abs=0.04)


def test_unknown_positive_sampling_names_the_key():
    with pytest.raises(ValueError, match="data.positive_sampling must be one of"):
        _sampler(positive_sampling="nodule")


# ------------------------------------------------------------------------------------------------ contrast sampling
WINDOW = (-1000.0, 400.0)
SOLID, GGO, PLEURAL = 1, 2, 3  # label ids of three 4-voxel-wide nodules of the same diameter


def _hu(value: float) -> float:
    return (value - WINDOW[0]) / (WINDOW[1] - WINDOW[0])  # HU -> the [0, 1] window of pivot preprocess


def _lung(pleural: bool = True) -> dict:
    """Lung at -850 HU with a solid (40 HU) and a ground-glass (-550 HU) nodule, and a solid one on the chest wall."""
    image = np.full(SHAPE, _hu(-850.0), dtype=np.float32)
    label = np.zeros(SHAPE, dtype=np.float32)
    for uid, box, hu in ((SOLID, np.s_[8:12, 8:12, 8:12], 40.0), (GGO, np.s_[24:28, 8:12, 8:12], -550.0)):
        image[box], label[box] = _hu(hu), uid
    if pleural:
        image[:, 29:, :] = _hu(40.0)  # chest wall: y >= 29, the nodule (y 26-29) sinks into it
        image[16:20, 26:30, 16:20], label[16:20, 26:30, 16:20] = _hu(40.0), PLEURAL
    return {
        "image": torch.as_tensor(image[None]),
        "label": torch.as_tensor(label[None]),
        "seriesuid": "lung-a",
        "nodule_diameters": np.array([0.0, 6.0, 6.0, 6.0], dtype=np.float32),
    }


def test_nodule_contrast_is_hu_above_the_surrounding_tissue():
    d = _lung()
    contrast = nodule_contrast(d["image"][0].numpy(), d["label"][0].numpy(), [SOLID, GGO, PLEURAL, 9], WINDOW)
    assert contrast[SOLID] == pytest.approx(890.0, abs=1.0)  # 40 HU in -850 HU lung
    assert contrast[GGO] == pytest.approx(300.0, abs=1.0)
    # the chest wall in its shell lowers a juxtapleural nodule's contrast below that of the same nodule in lung
    assert 0 < contrast[PLEURAL] < contrast[SOLID] - 150
    assert np.isnan(contrast[9])  # no such nodule


def test_contrast_sampling_favours_low_contrast_nodules():
    d = _lung()
    label, image, diameters = d["label"][0].numpy(), d["image"][0].numpy(), d["nodule_diameters"]
    counts = {}
    for mode in ("size", "contrast"):
        sampler = _sampler(num_samples=4, pos=1, neg=0, positive_sampling=mode, contrast_reference_hu=700.0)
        ids = [int(label[c]) for _ in range(500) for _, c in sampler.plan(label, diameters, "lung-a", image)]
        counts[mode] = collections.Counter(ids)
    # equal diameters: size sampling draws each third of the time; contrast weights 1 (890 HU), 700 / 300 (ground
    # glass) and 700 / contrast (sunk into the chest wall, > 1) shift the draws to the two faint ones
    assert counts["size"][GGO] / 2000 == pytest.approx(1 / 3, abs=0.04)
    w_pleural = 700.0 / nodule_contrast(image, label, [PLEURAL], WINDOW)[PLEURAL]
    total = 1.0 + 700.0 / 300.0 + w_pleural
    assert counts["contrast"][GGO] / 2000 == pytest.approx(700.0 / 300.0 / total, abs=0.04)
    assert counts["contrast"][SOLID] / 2000 == pytest.approx(1.0 / total, abs=0.04)
    assert w_pleural > 1.2 and counts["contrast"][PLEURAL] / 2000 == pytest.approx(w_pleural / total, abs=0.04)


def test_contrast_sampling_gives_scans_of_subtle_nodules_more_positive_crops():
    solid_only = _lung(pleural=False)
    solid_only["label"][solid_only["label"] == GGO] = 0
    ggo_only = _lung(pleural=False)
    ggo_only["label"][ggo_only["label"] == SOLID] = 0
    shares = {}
    for name, d in (("solid", solid_only), ("ggo", ggo_only)):
        sampler = _sampler(num_samples=4, pos=1, neg=1, positive_sampling="contrast")
        label, image = d["label"][0].numpy(), d["image"][0].numpy()
        kinds = [k for _ in range(500) for k, _ in sampler.plan(label, d["nodule_diameters"], name, image)]
        shares[name] = kinds.count("positive") / len(kinds)
    assert shares["solid"] == pytest.approx(0.5, abs=0.03)  # contrast 890 HU >= 500: the configured 1:1
    assert shares["ggo"] == pytest.approx(0.5 * 1.25, abs=0.03)  # at most a quarter more


def test_contrast_sampling_through_the_transform_and_without_an_image():
    d = _lung()
    sampler = _sampler(num_samples=4, pos=1, neg=0, positive_sampling="contrast")
    crops = sampler(d)
    assert [c["crop_kind"] for c in crops] == ["positive"] * 4
    assert set(sampler._contrasts["lung-a"]) == {SOLID, GGO, PLEURAL}  # measured once per scan, then cached
    with pytest.raises(ValueError, match="positive_sampling: contrast measures each nodule on the image"):
        sampler.plan(d["label"][0].numpy(), d["nodule_diameters"], "lung-b", None)
    with pytest.raises(ValueError, match="data.positive_contrast_hu must be > 0"):
        _sampler(positive_sampling="contrast", contrast_reference_hu=0)
