"""Tests for pivot_monai.losses: focal/dice heatmap loss, hard negatives, masked losses, multi-task loss."""

from __future__ import annotations

import math

import pytest
import torch

from pivot_monai.losses import (
    HeatmapLoss,
    MaskedBCEWithLogitsLoss,
    MaskedSmoothL1Loss,
    MultiTaskDetectionLoss,
    build_loss,
    downsample_targets,
    select_hard_negatives,
)
from pivot_monai.networks import PivotDetector

LOG2 = math.log(2.0)


def _vox(*values: float) -> torch.Tensor:
    """A (1, 1, 1, 1, N) tensor: N voxels in the (B, 1, D, H, W) layout."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, 1, -1)


def _targets(shape=(1, 1, 8, 8, 8), centre=(3, 4, 5), diameter=6.0, malignant=1.0) -> dict[str, torch.Tensor]:
    heatmap, mask = torch.zeros(shape), torch.zeros(shape, dtype=torch.bool)
    heatmap[(0, 0, *centre)] = 1.0
    mask[(0, 0, *centre)] = True
    return {
        "heatmap": heatmap,
        "diameter": mask.float() * diameter,
        "malignancy": mask.float() * malignant,
        "mask": mask,
    }


# ----------------------------------------------------------------------------------------------- heatmap losses
def test_focal_loss_matches_hand_computation():
    # p = sigmoid(0) = 0.5 at both voxels; alpha_t = 0.25 (t=1) / 0.75 (t=0); (1 - p_t)^2 = 0.25; -log p_t = log 2
    loss = HeatmapLoss("focal", alpha=0.25, gamma=2.0)(_vox(0.0, 0.0), _vox(1.0, 0.0))
    expected = 0.25 * 0.25 * LOG2 + 0.75 * 0.25 * LOG2  # summed, divided by the target mass 1
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_focal_loss_confident_voxels_are_down_weighted():
    # t=1, x=2: p = sigmoid(2), loss = 0.25 (1-p)^2 (-log p); t=0, x=-3: q = sigmoid(3), loss = 0.75 (1-q)^2 (-log q)
    p, q = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(-3.0))
    expected = 0.25 * (1 - p) ** 2 * -math.log(p) + 0.75 * (1 - q) ** 2 * -math.log(q)
    loss = HeatmapLoss("focal", alpha=0.25, gamma=2.0)(_vox(2.0, -3.0), _vox(1.0, 0.0))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_focal_loss_accepts_soft_gaussian_targets():
    # t = 0.5, x = 1: BCE = x - x t + log(1 + e^-x); modulating factor |t - sigmoid(1)|^2; alpha_t = 0.5;
    # the sum is divided by the target mass max(1, 0.5) = 1
    bce = 1.0 - 0.5 + math.log(1 + math.exp(-1.0))
    p = 1 / (1 + math.exp(-1.0))
    loss = HeatmapLoss("focal", alpha=0.25, gamma=2.0)(_vox(1.0), _vox(0.5))
    assert loss.item() == pytest.approx(0.5 * (p - 0.5) ** 2 * bce, rel=1e-6)
    logits = torch.linspace(-6, 6, 9).view(1, 1, 1, 1, 9).requires_grad_()
    HeatmapLoss("focal")(logits, torch.rand(1, 1, 1, 1, 9)).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("gamma", [0.0, 2.0])
@pytest.mark.parametrize("t", [0.3, 0.7])
def test_focal_loss_is_minimised_at_the_soft_target(gamma, t):
    logits = torch.linspace(-4, 4, 801).view(1, 1, 1, 1, -1)
    per_voxel = HeatmapLoss("focal", alpha=None, gamma=gamma).loss(logits, torch.full_like(logits, t))
    assert torch.sigmoid(logits.view(-1)[per_voxel.argmin()]).item() == pytest.approx(t, abs=0.01)


def test_dice_loss_matches_hand_computation():
    # p = 0.5 everywhere, t = [1, 0, 0, 0]: 1 - (2 * 0.5 + s) / (sum p^2 + sum t^2 + s) = 1 - 2 / 3 for s = 1
    loss = HeatmapLoss("dice", smooth=1.0, squared_pred=True)(_vox(0.0, 0.0, 0.0, 0.0), _vox(1.0, 0.0, 0.0, 0.0))
    assert loss.item() == pytest.approx(1.0 / 3.0, rel=1e-6)
    # without squares the denominator is sum p + sum t = 2 + 1
    loss = HeatmapLoss("dice", smooth=1.0, squared_pred=False)(_vox(0.0, 0.0, 0.0, 0.0), _vox(1.0, 0.0, 0.0, 0.0))
    assert loss.item() == pytest.approx(1.0 - 2.0 / 4.0, rel=1e-6)


def test_heatmap_loss_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes differ"):
        HeatmapLoss()(_vox(0.0, 0.0), _vox(1.0))


# ----------------------------------------------------------------------------------------------- hard negatives
def test_select_hard_negatives_keeps_positives_and_hardest_negatives():
    loss_map = _vox(0.0, 0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.05)
    target = _vox(1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.6)  # two positives (>= 0.5) with low loss
    keep = select_hard_negatives(loss_map, target, neg_pos_ratio=1.5, batch_hard_ratio=1.0, min_negatives=0)
    assert keep.dtype == torch.bool and keep.shape == loss_map.shape
    assert keep.view(-1).tolist() == [True, True, False, True, False, True, False, True]


def test_select_hard_negatives_counts_hard_and_random_negatives():
    generator = torch.Generator().manual_seed(0)
    loss_map = torch.rand(2, 1, 6, 6, 6, generator=generator)
    target = torch.zeros_like(loss_map)
    target[0, 0, 1, 1, 1] = target[1, 0, 2, 2, 2] = 1.0
    target[1, 0, 2, 2, 3] = 0.4  # Gaussian tail below pos_threshold: a negative
    keep = select_hard_negatives(
        loss_map, target, neg_pos_ratio=3.0, batch_hard_ratio=0.5, generator=generator, min_negatives=0
    )
    positive = target >= 0.5
    assert keep[positive].all()
    assert int((keep & ~positive).sum()) == 6
    hardest = loss_map.masked_fill(positive, -1).view(-1).topk(3).indices
    assert keep.view(-1)[hardest].all()


def test_select_hard_negatives_is_reproducible_with_a_seeded_generator():
    loss_map, target = torch.rand(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8)
    target[0, 0, 4, 4, 4] = 1.0
    masks = [
        select_hard_negatives(loss_map, target, 10.0, 0.2, generator=torch.Generator().manual_seed(7)) for _ in range(2)
    ]
    assert torch.equal(masks[0], masks[1])


def test_select_hard_negatives_without_positives_keeps_min_negatives():
    loss_map, target = torch.rand(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4)
    keep = select_hard_negatives(loss_map, target, 3.0, 0.5, min_negatives=10)
    assert int(keep.sum()) == 10
    assert keep.view(-1)[loss_map.view(-1).topk(5).indices].all()


def test_select_hard_negatives_is_capped_by_available_negatives():
    keep = select_hard_negatives(_vox(0.1, 0.2, 0.3), _vox(1.0, 0.0, 0.0), 10.0, 0.5, min_negatives=0)
    assert keep.all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"neg_pos_ratio": -1.0}, "neg_pos_ratio"), ({"batch_hard_ratio": 1.5}, "batch_hard_ratio")],
)
def test_select_hard_negatives_rejects_bad_ratios(kwargs, match):
    args = {"neg_pos_ratio": 1.0, "batch_hard_ratio": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        select_hard_negatives(_vox(0.1), _vox(1.0), **args)


def test_focal_loss_with_hard_negatives_averages_over_kept_voxels():
    logits, target = _vox(0.0, 0.0, -1.0, -3.0), _vox(1.0, 0.0, 0.0, 0.0)
    full = HeatmapLoss("focal").loss(logits, target).view(-1)
    loss_fn = HeatmapLoss("focal", neg_pos_ratio=1.0, batch_hard_ratio=1.0, min_negatives=0)
    loss = loss_fn(logits, target)
    assert loss.item() == pytest.approx((full[0] + full[1]).item(), rel=1e-6)  # voxel 1 is the hardest negative
    assert loss_fn.last_keep.view(-1).tolist() == [True, True, False, False]


def test_dice_loss_with_hard_negatives_ignores_dropped_voxels():
    # keep voxel 0 (positive) and voxel 1 (highest probability); voxels 2, 3 drop out of numerator and denominator
    logits, target = _vox(0.0, 0.0, -1.0, -2.0), _vox(1.0, 0.0, 0.0, 0.0)
    loss = HeatmapLoss("dice", smooth=1.0, neg_pos_ratio=1.0, batch_hard_ratio=1.0, min_negatives=0)(logits, target)
    expected = HeatmapLoss("dice", smooth=1.0)(_vox(0.0, 0.0), _vox(1.0, 0.0))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ----------------------------------------------------------------------------------------------- masked losses
def test_masked_smooth_l1_in_units_of_10_mm():
    # |d| / 10 = 0.2 -> 0.5 * 0.04; 0 -> 0; 2.0 -> 2.0 - 0.5; the unmasked voxel is ignored
    pred, target, mask = _vox(12.0, 5.0, 30.0, 0.0), _vox(10.0, 5.0, 10.0, 99.0), _vox(1, 1, 1, 0).bool()
    loss = MaskedSmoothL1Loss(beta=1.0, scale_mm=10.0)(pred, target, mask)
    assert loss.item() == pytest.approx((0.02 + 0.0 + 1.5) / 3, rel=1e-6)


def test_masked_bce_applies_pos_weight_at_nodule_voxels_only():
    # malignant voxel at logit 0 costs pos_weight * log 2, benign voxel log 2; the unmasked voxel is ignored
    loss = MaskedBCEWithLogitsLoss(pos_weight=3.0)(_vox(0.0, 0.0, 5.0), _vox(1.0, 0.0, 0.0), _vox(1, 1, 0).bool())
    assert loss.item() == pytest.approx((3.0 * LOG2 + LOG2) / 2, rel=1e-6)


def test_masked_losses_are_zero_not_nan_without_nodule_voxels():
    pred = _vox(3.0, -2.0).requires_grad_()
    empty = _vox(0, 0).bool()
    for loss in (
        MaskedSmoothL1Loss()(pred, _vox(1.0, 1.0), empty),
        MaskedBCEWithLogitsLoss(2.0)(pred, _vox(1, 0), empty),
    ):
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, pred)
        assert torch.equal(grad, torch.zeros_like(pred))


# ----------------------------------------------------------------------------------------------- multi-task loss
def test_multitask_total_is_weighted_sum_of_components():
    pred = {"heatmap": _vox(0.0, 0.0), "diameter": _vox(12.0, 0.0), "malignancy": _vox(0.0, 0.0)}
    target = {"heatmap": _vox(1.0, 0.0), "diameter": _vox(10.0, 0.0), "malignancy": _vox(1.0, 0.0), "mask": _vox(1, 0)}
    loss_fn = MultiTaskDetectionLoss(
        detection={"type": "focal", "alpha": 0.25, "gamma": 2.0},
        classification={"pos_weight": 2.0},
        weights={"detection": 2.0, "regression": 0.5, "classification": 0.25},
    )
    total = loss_fn(pred, target)
    detection = 0.25 * 0.25 * LOG2 + 0.75 * 0.25 * LOG2  # summed / target mass 1
    regression, classification = 0.5 * 0.2**2, 2.0 * LOG2
    assert loss_fn.last_components["detection"].item() == pytest.approx(detection, rel=1e-6)
    assert loss_fn.last_components["regression"].item() == pytest.approx(regression, rel=1e-5)
    assert loss_fn.last_components["classification"].item() == pytest.approx(classification, rel=1e-6)
    expected = 2.0 * detection + 0.5 * regression + 0.25 * classification
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert loss_fn.last_components["total"].item() == pytest.approx(expected, rel=1e-6)


def test_multitask_without_nodules_has_zero_regression_and_classification():
    target = _targets()
    target["mask"].zero_()
    target["heatmap"].zero_()
    pred = {k: torch.randn(1, 1, 8, 8, 8) for k in ("heatmap", "diameter", "malignancy")}
    loss_fn = MultiTaskDetectionLoss()
    total = loss_fn(pred, target)
    assert torch.isfinite(total)
    assert loss_fn.last_components["regression"].item() == 0.0
    assert loss_fn.last_components["classification"].item() == 0.0


def test_multitask_zero_weight_skips_component_and_its_keys():
    pred = {"heatmap": torch.zeros(1, 1, 4, 4, 4)}
    loss_fn = MultiTaskDetectionLoss(weights={"regression": 0.0, "classification": 0.0})
    loss_fn(pred, {"heatmap": torch.zeros(1, 1, 4, 4, 4)})
    assert loss_fn.last_components["regression"].item() == 0.0


def test_multitask_missing_key_raises():
    with pytest.raises(ValueError, match=r"target is missing key\(s\) \['diameter', 'malignancy', 'mask'\]"):
        MultiTaskDetectionLoss()(
            {k: torch.zeros(1, 1, 4, 4, 4) for k in ("heatmap", "diameter", "malignancy")},
            {"heatmap": torch.zeros(1, 1, 4, 4, 4)},
        )


def test_downsample_targets_max_pools_peaks_and_small_nodules():
    target = _targets(centre=(3, 5, 1), diameter=4.0)
    target["meta"] = "kept"
    coarse = downsample_targets(target, (4, 4, 4))
    assert coarse["heatmap"].shape == (1, 1, 4, 4, 4)
    assert coarse["heatmap"][0, 0, 1, 2, 0] == 1.0 and coarse["heatmap"].sum() == 1.0
    assert coarse["mask"].dtype == torch.bool and coarse["mask"][0, 0, 1, 2, 0]
    assert coarse["diameter"][0, 0, 1, 2, 0] == 4.0 and coarse["malignancy"][0, 0, 1, 2, 0] == 1.0
    assert coarse["meta"] == "kept"
    assert downsample_targets(target, (8, 8, 8))["heatmap"] is target["heatmap"]


def test_downsample_targets_rejects_non_integer_factors():
    with pytest.raises(ValueError, match=r"not an integer multiple of the prediction shape \[3, 4, 4\]"):
        downsample_targets(_targets(), (3, 4, 4))


def test_multitask_loss_downsamples_targets_for_output_stride_2():
    pred = {k: torch.zeros(1, 1, 4, 4, 4) for k in ("heatmap", "diameter", "malignancy")}
    loss_fn = MultiTaskDetectionLoss()
    loss_fn(pred, _targets())
    expected = MultiTaskDetectionLoss()(pred, downsample_targets(_targets(), (4, 4, 4)))
    assert loss_fn.last_components["total"].item() == pytest.approx(expected.item())
    assert loss_fn.last_components["regression"].item() > 0  # the one-voxel nodule survived the 2x reduction


@pytest.mark.parametrize("detection_type", ["focal", "dice"])
def test_gradients_flow_from_multitask_loss_to_all_heads(detection_type):
    torch.manual_seed(0)
    net = PivotDetector(base_filters=4, depth=2, output_stride=2, batch_norm=False)
    loss_fn = MultiTaskDetectionLoss(detection={"type": detection_type}, hard_negative={"enabled": True, "seed": 0})
    loss_fn(net(torch.randn(1, 1, 8, 8, 8)), _targets()).backward()
    for module in (net.encoder, net.heatmap_head, net.diameter_head, net.malignancy_head):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


def test_hard_negative_switch_is_settable_at_run_time():
    loss_fn = build_loss({"hard_negative": {"enabled": False}})
    assert not loss_fn.hard_negative_enabled
    loss_fn.hard_negative_enabled = True
    assert loss_fn.detection_loss.hard_negative_enabled


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"detection": {"type": "tversky"}}, r"training\.loss\.detection\.type must be one of \['focal', 'dice'\]"),
        ({"regression": {"type": "l2"}}, r"training\.loss\.regression\.type must be one of \['smooth_l1'\]"),
        ({"classification": {"type": "ce"}}, r"training\.loss\.classification\.type must be one of \['bce'\]"),
        ({"detection": {"gama": 2.0}}, r"training\.loss\.detection\.gama"),
        ({"weights": {"detection": -1.0}}, r"training\.loss\.weights\.detection must be >= 0"),
        ({"focal": {}}, r"unknown key\(s\) \['training\.loss\.focal'\]"),
    ],
)
def test_build_loss_rejects_bad_config(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_loss(cfg)


def test_unrated_nodules_are_left_out_of_the_triage_loss():
    target = _targets()
    target["malignancy_mask"] = torch.zeros_like(target["mask"])
    pred = {k: torch.randn(1, 1, 8, 8, 8) for k in ("heatmap", "diameter", "malignancy")}
    loss_fn = MultiTaskDetectionLoss()
    loss_fn(pred, target)
    assert loss_fn.last_components["classification"].item() == 0.0
    assert loss_fn.last_components["regression"].item() > 0.0
