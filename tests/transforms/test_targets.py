from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from pivot_monai.transforms.augment import build_augmentation
from pivot_monai.transforms.targets import NoduleTargetsd, RecordInstanceVolumesd, gaussian_heatmap, instance_stats


def _item(centre=(20.0, 14.0, 17.0), radius=4.0, shape=(40, 36, 32)):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    sphere = np.sum((grid - np.asarray(centre)) ** 2, -1) <= radius**2
    label = np.zeros(shape, np.float32)
    label[sphere] = 1
    image = np.where(sphere, 0.8, 0.1).astype(np.float32)
    diam = np.zeros(65, np.float32)
    diam[1] = 2 * radius * 1.5
    malig = np.full(65, -1.0, np.float32)
    malig[1] = 1.0
    return {
        "image": torch.as_tensor(image[None]),
        "label": torch.as_tensor(label[None]),
        "nodule_diameters": diam,
        "nodule_malignancy": malig,
    }


def test_heatmap_peaks_at_nodule_centre_with_size_and_malignancy_targets():
    out = NoduleTargetsd(spacing=(1.5, 1.5, 1.5))(_item())
    heat = out["heatmap"][0].numpy()
    assert heat.max() == pytest.approx(1.0, abs=1e-6)
    assert np.unravel_index(heat.argmax(), heat.shape) == (20, 14, 17)
    mask = out["mask"][0].numpy() > 0
    assert np.allclose(out["diameter"][0].numpy()[mask], 12.0) and out["diameter"][0].numpy()[~mask].max() == 0
    assert np.all(out["malignancy"][0].numpy()[mask] == 1.0) and out["malignancy_mask"][0].numpy()[mask].all()


def test_heatmap_sigma_follows_sigma_scale_above_the_minimum():
    # 12 mm nodule at 1.5 mm voxels: sigma 0.5 * 6 / 1.5 = 2 voxels, 1 voxel at scale 0.25; mass ~ sigma^3
    masses = {
        s: float(NoduleTargetsd(spacing=(1.5,) * 3, sigma_scale=s)(_item())["heatmap"].sum()) for s in (0.5, 0.25)
    }
    assert masses[0.5] / masses[0.25] == pytest.approx(8.0, rel=0.05)
    # at scale 0.1 sigma (0.4 voxels) is raised to min_sigma_vox
    floor = NoduleTargetsd(spacing=(1.5,) * 3, sigma_scale=0.1, min_sigma_vox=1.0)(_item())["heatmap"].sum()
    assert float(floor) == pytest.approx(masses[0.25], rel=1e-6)
    with pytest.raises(ValueError, match="sigma_scale must be >= 0 and min_sigma_voxels > 0"):
        NoduleTargetsd(sigma_scale=-0.1)
    with pytest.raises(ValueError, match="min_sigma_voxels > 0"):
        NoduleTargetsd(min_sigma_vox=0.0)


def test_sigma_scale_zero_gives_every_nodule_the_same_target_mass():
    # a 12 mm and a 4 mm nodule: with sigma_scale 0 both Gaussians have sigma min_sigma_vox, so equal mass
    label = np.zeros((1, 40, 40, 40), dtype=np.float32)
    label[0, 6:14, 6:14, 6:14] = 1
    label[0, 28:31, 28:31, 28:31] = 2
    item = {"label": label, "nodule_diameters": np.array([0.0, 12.0, 4.0], dtype=np.float32)}

    def masses(scale):
        heat = NoduleTargetsd(spacing=(1.5,) * 3, sigma_scale=scale)(item)["heatmap"][0].numpy()
        return heat[:20, :20, :20].sum(), heat[20:, 20:, 20:].sum()

    big, small = masses(0.0)
    assert big == pytest.approx(small, rel=0.05)
    big, small = masses(0.5)
    assert big > 5 * small


def test_each_instance_gets_its_own_diameter_malignancy_and_peak():
    # instance 1: a rated 12 mm nodule; instance 3: no rating and no annotated diameter (equivalent diameter used)
    item = _item()
    label = item["label"][0].numpy().copy()
    label[2:6, 3:5, 4:10] = 3  # a 4 x 2 x 6 box: 48 voxels, centroid (3.5, 3.5, 6.5)
    item["label"] = torch.as_tensor(label[None])
    stats = instance_stats(label.astype(np.int32))
    assert sorted(stats) == [1, 3] and stats[3][1] == 48
    np.testing.assert_allclose(stats[3][0], [3.5, 3.5, 6.5])
    np.testing.assert_allclose(stats[1][0], [20.0, 14.0, 17.0])
    counts = RecordInstanceVolumesd()(item)["instance_volumes"]
    assert counts[1] == stats[1][1] and counts[3] == 48 and counts[2] == 0

    out = NoduleTargetsd(spacing=(1.5, 1.5, 1.5))(item)
    diameter, malignancy, rated = (out[k][0].numpy() for k in ("diameter", "malignancy", "malignancy_mask"))
    box = label == 3
    equivalent = (6.0 * 48 * 1.5**3 / np.pi) ** (1.0 / 3.0)
    assert np.allclose(diameter[box], equivalent) and np.allclose(diameter[label == 1], 12.0)
    assert rated[box].max() == 0 and malignancy[box].max() == 0 and rated[label == 1].min() == 1
    assert out["mask"][0].numpy().sum() == (label > 0).sum()
    heat = out["heatmap"][0].numpy()
    assert heat[3:5, 3:5, 6:8].max() == pytest.approx(np.exp(-0.5 * 3 * 0.25 / max(0.25 * equivalent / 1.5, 1.0) ** 2))


def test_no_nodule_gives_empty_targets():
    item = _item()
    item["label"] = torch.zeros_like(item["label"])
    out = NoduleTargetsd()(item)
    assert float(out["heatmap"].max()) == 0.0 and float(out["mask"].sum()) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_targets_stay_on_the_nodule_after_spatial_augmentation(seed):
    aug = {
        "flip": {"prob": 1.0, "axes": [0, 1, 2]},
        "rotation": {"prob": 1.0, "max_angle": 25},
        "scaling": {"prob": 1.0, "scale_range": [0.85, 1.15]},
        "elastic": {"prob": 0.0},
    }
    pipeline = Compose([RecordInstanceVolumesd(), *build_augmentation(aug), NoduleTargetsd(spacing=(1.5,) * 3)])
    pipeline.set_random_state(seed=seed)
    out = pipeline(_item())
    image, heat = out["image"][0].numpy(), out["heatmap"][0].numpy()
    peak = np.unravel_index(heat.argmax(), heat.shape)
    assert image[peak] > 0.5, "heatmap peak left the (moved) nodule"
    bright = np.argwhere(image > 0.45).mean(axis=0)
    assert np.linalg.norm(bright - np.asarray(peak)) < 1.5
    d = out["diameter"][0].numpy()[out["mask"][0].numpy() > 0]
    assert 12.0 * 0.8 < d.mean() < 12.0 * 1.2


def test_diameter_target_follows_scaling():
    from monai.transforms import Zoomd

    item = RecordInstanceVolumesd()(_item())
    zoomed = Zoomd(["image", "label"], zoom=1.2, mode=["trilinear", "nearest"], keep_size=True)(item)
    out = NoduleTargetsd(spacing=(1.5,) * 3)(zoomed)
    d = out["diameter"][0].numpy()[out["mask"][0].numpy() > 0]
    assert d.mean() == pytest.approx(12.0 * 1.2, rel=0.08)


def test_gaussian_heatmap_anisotropic_sigma():
    heat = gaussian_heatmap((21, 21, 21), np.array([[10.0, 10.0, 10.0]]), np.array([[1.0, 2.0, 3.0]]))
    assert heat[10, 10, 10] == pytest.approx(1.0)
    assert heat[11, 10, 10] == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert heat[10, 10, 13] == pytest.approx(np.exp(-0.5), rel=1e-5)


def test_augmentation_errors_name_the_key():
    with pytest.raises(ValueError, match=r"augmentation.flip.prob"):
        build_augmentation({"flip": {"prob": 1.5}})
    with pytest.raises(ValueError, match="unknown key"):
        build_augmentation({"shear": {}})
    assert build_augmentation({"enabled": False, "flip": {"prob": 1.0}}) == []
