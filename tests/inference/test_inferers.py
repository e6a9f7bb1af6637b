from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import SimpleInferer, SlidingWindowInferer

from pivot_monai.inference.inferers import FittedWindowInferer, TTAInferer, fit_roi
from pivot_monai.inference.predictor import Predictor

TTA8 = {"enabled": True, "augmentation_types": ["flip_x", "flip_y", "rotate_90"], "num_augmentations": 8}


def _pool(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Position-exact 'network' at output stride 2: the 2x2x2 mean of the input."""
    y = F.avg_pool3d(x, 2)
    return {"heatmap": y, "diameter": 10 * y}


class _Pointwise(torch.nn.Module):
    """A 1x1x1 'network': its output at a voxel depends on that voxel only, so any windowing gives the same maps."""

    def __init__(self) -> None:
        super().__init__()
        self.windows: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.windows += [tuple(x.shape[2:])] * x.shape[0]
        return {"heatmap": torch.sigmoid(3 * x - 1), "diameter": 5 * x, "malignancy": x * x}


def test_tta_inferer_inverts_every_pass_at_stride_2_with_dict_tuple_and_tensor_outputs():
    x = torch.rand(1, 1, 13, 10, 11, generator=torch.Generator().manual_seed(3))
    expected = F.avg_pool3d(F.pad(x, (0, 1, 0, 0, 0, 1)), 2)
    inferer = TTAInferer(SimpleInferer(), TTA8, output_stride=2)
    out = inferer(x, _pool)
    assert out["heatmap"].shape == (1, 1, 7, 5, 6)
    torch.testing.assert_close(out["heatmap"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out["diameter"], 10 * expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(inferer(x, lambda t: _pool(t)["heatmap"]), expected, atol=1e-6, rtol=0)
    heat, diam = inferer(x, lambda t: tuple(_pool(t).values()))
    torch.testing.assert_close(diam, 10 * expected, atol=1e-5, rtol=0)


def test_tta_inferer_runs_the_inner_inferer_once_per_augmentation_and_is_a_pass_through_when_off():
    calls: list[tuple[int, ...]] = []

    def net(t: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(t.shape[2:]))
        return t

    x = torch.rand(1, 1, 6, 8, 4)
    assert torch.equal(TTAInferer(SimpleInferer(), None)(x, net), x)
    assert calls == [(6, 8, 4)]
    calls.clear()
    torch.testing.assert_close(TTAInferer(SimpleInferer(), TTA8)(x, net), x)
    assert len(calls) == 8 and (8, 6, 4) in calls  # rotated passes see x and y swapped


def test_tta_inferer_rejects_a_bad_stride_and_bad_settings():
    with pytest.raises(ValueError, match="output_stride"):
        TTAInferer(SimpleInferer(), None, output_stride=0)
    with pytest.raises(ValueError, match="unknown TTA operation"):
        TTAInferer(SimpleInferer(), {"enabled": True, "augmentation_types": ["flip_w"]})


@pytest.mark.parametrize(
    ("size", "max_roi", "multiple", "min_roi", "expected"),
    [
        ((135, 95, 139), (128, 128, 128), 8, None, (88, 96, 88)),  # long axes split in two, the short one whole
        ((60, 40, 30), (128, 128, 128), 16, None, (64, 48, 32)),  # a small volume is one window
        ((60, 40, 30), (128, 128, 128), 16, (48, 48, 48), (64, 48, 48)),  # never below the training patch
        ((400, 100, 100), (96, 96, 96), 8, None, (96, 64, 64)),  # capped at the largest window
    ],
)
def test_fit_roi(size, max_roi, multiple, min_roi, expected):
    roi = fit_roi(size, max_roi, multiple, min_roi)
    assert roi == expected
    assert all(r % multiple == 0 and r <= m for r, m in zip(roi, max_roi))


def test_fit_roi_rejects_sizes_the_network_cannot_take():
    with pytest.raises(ValueError, match=r"divisible by 16 \(2 \*\* model.depth\)"):
        fit_roi((100, 100, 100), (100, 100, 100), 16)
    with pytest.raises(ValueError, match="inference.roi_size"):
        fit_roi((100, 100, 100), (96, 96), 16)


def test_fitted_windows_give_the_patch_windows_maps_with_far_fewer_forwards():
    x = torch.rand(1, 1, 70, 52, 61, generator=torch.Generator().manual_seed(5))
    patch_net, fitted_net = _Pointwise(), _Pointwise()
    plain = Predictor(patch_net, (16, 16, 16), output_stride=1)(x)
    fitted = Predictor(fitted_net, (16, 16, 16), output_stride=1, max_roi=(64, 64, 64), multiple=16)(x)
    for key in plain:
        torch.testing.assert_close(fitted[key], plain[key], atol=1e-5, rtol=1e-5)
    assert len(fitted_net.windows) < len(patch_net.windows) / 10
    assert set(fitted_net.windows) == {(48, 64, 64)}
    voxels = sum(torch.Size(w).numel() for w in fitted_net.windows)
    assert voxels < 2 * x.numel() < sum(torch.Size(w).numel() for w in patch_net.windows)


def test_predictor_from_settings_reads_roi_size_and_checks_it():
    from pivot_monai.inference.settings import InferenceSettings

    def settings(model=None, inference=None):
        return InferenceSettings.from_config(
            {"data": {"patch_size": [16, 16, 16]}, "model": model, "inference": inference}
        )

    net = _Pointwise()
    p = Predictor.from_settings(net, settings({"depth": 2}, {"roi_size": [32, 32, 32]}))
    assert p.max_roi == (32, 32, 32) and p.multiple == 4
    assert p.window((40, 20, 12)) == (28, 20, 16)
    assert Predictor.from_settings(net, settings()).window((40, 20, 12)) == (16, 16, 16)
    with pytest.raises(ValueError, match="inference.roi_size must be 3 sizes >= data.patch_size"):
        Predictor.from_settings(net, settings(None, {"roi_size": [8, 8, 8]}))


def test_sliding_window_inferer_inside_tta_inferer_matches_predictor():
    x = torch.rand(1, 1, 20, 18, 22, generator=torch.Generator().manual_seed(2))
    net = _Pointwise()
    window = SlidingWindowInferer((16, 16, 16), sw_batch_size=2, overlap=0.25, mode="gaussian")
    direct = TTAInferer(window, TTA8)(x, net)
    predicted = Predictor(net, (16, 16, 16), tta=TTA8, output_stride=1)(x)
    for key in predicted:
        torch.testing.assert_close(direct[key], predicted[key], atol=1e-5, rtol=1e-5)


def test_fitted_window_inferer_is_the_plain_sliding_window_without_max_roi():
    x = torch.rand(1, 1, 40, 36, 30, generator=torch.Generator().manual_seed(8))
    net = lambda t: {"heatmap": torch.sigmoid(F.avg_pool3d(t, 3, stride=1, padding=1))}  # noqa: E731 (needs context)
    plain = SlidingWindowInferer((16, 16, 16), sw_batch_size=2, overlap=0.25, mode="gaussian")(x, net)
    fitted = FittedWindowInferer((16, 16, 16), None, 8, sw_batch_size=2, overlap=0.25, mode="gaussian")(x, net)
    torch.testing.assert_close(fitted["heatmap"], plain["heatmap"])


def test_fitted_window_inferer_pads_at_the_far_end_so_stride_2_maps_stay_aligned():
    # MONAI alone pads both ends of an input smaller than the window, which shifts stride-2 maps by a fraction
    x = torch.rand(1, 1, 13, 21, 18, generator=torch.Generator().manual_seed(4))
    inferer = FittedWindowInferer((8, 8, 8), max_roi=(32, 32, 32), multiple=8)
    assert inferer.window(x.shape[2:]) == (16, 24, 24)
    out = inferer(x, _pool)
    expected = F.avg_pool3d(F.pad(x, (0, 6, 0, 3, 0, 3)), 2)[..., :7, :11, :9]
    assert out["heatmap"].shape == (1, 1, 7, 11, 9)
    torch.testing.assert_close(out["heatmap"], expected, atol=1e-6, rtol=0)


def test_fitted_window_inferer_pads_to_the_stride_so_every_window_starts_on_an_output_voxel():
    # 37 voxels, 16-voxel windows, step 8: MONAI puts the last window at 21, half an output voxel off the stride-2 grid
    x = torch.rand(1, 1, 37, 16, 16, generator=torch.Generator().manual_seed(5))
    expected = F.avg_pool3d(F.pad(x, (0, 0, 0, 0, 0, 1)), 2)[..., :19, :, :]
    kwargs = {"sw_batch_size": 2, "overlap": 0.5, "mode": "constant"}
    aligned = FittedWindowInferer((16, 16, 16), None, 8, stride=2, **kwargs)(x, _pool)["heatmap"]
    assert aligned.shape == (1, 1, 19, 8, 8)
    torch.testing.assert_close(aligned, expected, atol=1e-6, rtol=0)
    unaligned = FittedWindowInferer((16, 16, 16), None, 8, **kwargs)(x, _pool)["heatmap"]
    assert not torch.allclose(unaligned[..., :18, :, :], expected[..., :18, :, :], atol=1e-3)
    with pytest.raises(ValueError, match="model.output_stride must be >= 1"):
        FittedWindowInferer((16, 16, 16), stride=0)


def test_fitted_window_inferer_checks_max_roi():
    with pytest.raises(ValueError, match=r"inference.roi_size must be 3 sizes >= data.patch_size \[16, 16, 16\]"):
        FittedWindowInferer((16, 16, 16), max_roi=(8, 8, 8), multiple=8)
    with pytest.raises(ValueError, match=r"divisible by 16"):
        FittedWindowInferer((16, 16, 16), max_roi=(40, 40, 40), multiple=16)


def test_predictor_takes_the_detectors_stated_stride_without_a_measuring_forward():
    from pivot_monai.networks import PivotDetector

    net = PivotDetector(base_filters=4, depth=3, output_stride=2).eval()
    shapes: list[tuple[int, ...]] = []
    net.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    predictor = Predictor(net, (16, 16, 16), max_roi=(64, 64, 64), multiple=8)
    assert predictor.stride() == 2 and shapes == []
    out = predictor(torch.rand(1, 1, 40, 24, 32))
    assert shapes == [(1, 1, 40, 24, 32)] and tuple(out["heatmap"].shape) == (1, 1, 20, 12, 16)
    # a network that does not state it is measured once on a zero patch
    plain = Predictor(lambda x: {**_pool(x), "malignancy": _pool(x)["heatmap"]}, (16, 16, 16))
    assert plain.output_stride is None and plain.stride() == 2
