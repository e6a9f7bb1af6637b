"""Tests for pivot_monai.host.onednn: oneDNN convolutions at any batch size and batch norm folding."""

from __future__ import annotations

import pytest
import torch

from pivot_monai.host.onednn import (
    OneDNNConvolutions,
    fuse_batch_norm,
    onednn_available,
)
from pivot_monai.inference.inferers import FittedWindowInferer
from pivot_monai.networks import PivotDetector

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")


def _conv_kernels(fn) -> set[str]:
    """The 3D convolution kernels ``fn()`` runs: PyTorch's native im2col one and/or oneDNN's."""
    with torch.profiler.profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()} & {"aten::slow_conv3d_forward", "aten::mkldnn_convolution"}


def _detector(**kwargs) -> PivotDetector:
    torch.manual_seed(0)
    net = PivotDetector(**{"base_filters": 4, "depth": 2, "output_stride": 2, **kwargs})
    with torch.no_grad():  # non-trivial running statistics, so folding has something to fold
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_a_single_small_window_runs_its_convolutions_on_onednn_in_the_mode():
    # the premise: for batch 1 and small N*C*D*H PyTorch picks its native im2col kernel
    conv = torch.nn.Conv3d(1, 8, 3, padding=1).eval()
    x = torch.rand(1, 1, 24, 20, 28)
    with torch.no_grad():
        assert _conv_kernels(lambda: conv(x)) == {"aten::slow_conv3d_forward"}
        ref = conv(x)
        with OneDNNConvolutions():
            assert _conv_kernels(lambda: conv(x)) == {"aten::mkldnn_convolution"}
            got = conv(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_mode_keeps_stride_padding_and_memory_format(channels_last):
    conv = torch.nn.Conv3d(3, 5, (3, 1, 5), stride=(2, 1, 1), padding=(1, 0, 2), dilation=(1, 2, 1)).eval()
    x = torch.rand(1, 3, 17, 12, 19)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last_3d), x.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        ref = conv(x)
        with OneDNNConvolutions():
            got = conv(x)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_the_mode_leaves_training_other_dtypes_and_autocast_to_pytorch():
    conv = torch.nn.Conv3d(1, 4, 3, padding=1)
    x = torch.rand(1, 1, 12, 12, 12)
    with OneDNNConvolutions():
        # gradients needed: PyTorch's own convolution, so backward works as in training
        out = conv(x)
        out.sum().backward()
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
        with torch.no_grad():
            assert "aten::mkldnn_convolution" not in _conv_kernels(lambda: conv.double()(x.double()))
            conv.float()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert conv(x).dtype == torch.bfloat16  # autocast's own cast policy still applies


def test_fuse_batch_norm_folds_every_norm_and_keeps_the_outputs():
    net = _detector()
    x = torch.rand(1, 1, 16, 20, 24)
    with torch.no_grad():
        ref = net(x)
    norms = sum(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())
    assert fuse_batch_norm(net) == norms > 0
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())
    with torch.no_grad():
        got = net(x)
    for key, value in ref.items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=1e-4)


def test_fuse_batch_norm_refuses_a_network_in_train_mode():
    net = _detector().train()
    with pytest.raises(ValueError, match="eval mode"):
        fuse_batch_norm(net)


def test_fuse_batch_norm_leaves_instance_norm_alone():
    net = _detector(batch_norm=False)
    assert fuse_batch_norm(net) == 0
    assert any(isinstance(m, torch.nn.InstanceNorm3d) for m in net.modules())


def test_the_fitted_window_inferer_runs_a_lung_box_window_on_onednn():
    net = _detector()
    x = torch.rand(1, 1, 40, 24, 48)
    inferer = FittedWindowInferer((16, 16, 16), max_roi=(64, 64, 64), multiple=4, stride=2)
    with torch.no_grad():
        kernels = _conv_kernels(lambda: inferer(x, net))
        got = inferer(x, net)
        ref = net(x)
    assert kernels == {"aten::mkldnn_convolution"}
    torch.testing.assert_close(got["heatmap"], ref["heatmap"], atol=1e-5, rtol=1e-4)


def test_the_mode_is_off_where_it_was_not_measured(monkeypatch):
    import pivot_monai.host.onednn as cpu_inference

    monkeypatch.setattr(cpu_inference.platform, "machine", lambda: "aarch64")
    assert not onednn_available()
    conv = torch.nn.Conv3d(1, 8, 3, padding=1).eval()
    with torch.no_grad(), OneDNNConvolutions():
        assert _conv_kernels(lambda: conv(torch.rand(1, 1, 16, 16, 16))) == {"aten::slow_conv3d_forward"}
