"""Tests for pivot_monai.networks: the multi-head detector and its config factory."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.utils import optional_import

from pivot_monai.networks import OUTPUT_KEYS, PivotDetector, build_network, count_parameters

ort, HAS_ORT = optional_import("onnxruntime")
# MONAI 1.5's sliding_window_inference indexes with a list of slices, which torch deprecates
_IGNORE_MONAI_INDEXING = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
_, HAS_ONNX = optional_import("onnx")


def _tiny(**kwargs) -> PivotDetector:
    torch.manual_seed(0)
    defaults = {"base_filters": 4, "depth": 2, "batch_norm": False}
    return PivotDetector(**{**defaults, **kwargs})


@pytest.mark.parametrize(
    ("depth", "base_filters", "output_stride", "size"),
    [(2, 4, 1, 16), (3, 8, 2, 16), (4, 4, 4, 16), (5, 2, 1, 32), (3, 4, 4, 24)],
)
def test_forward_returns_three_heads_at_output_stride(depth, base_filters, output_stride, size):
    net = PivotDetector(base_filters=base_filters, depth=depth, output_stride=output_stride)
    out = net(torch.randn(2, 1, size, size, size))
    assert tuple(out) == OUTPUT_KEYS
    expected = (2, 1) + (size // output_stride,) * 3
    for value in out.values():
        assert value.shape == expected
        assert value.dtype == torch.float32


def test_anisotropic_input_shape_is_kept():
    out = _tiny(output_stride=2).eval()(torch.randn(1, 1, 8, 16, 12))
    assert out["heatmap"].shape == (1, 1, 4, 8, 6)


def test_width_is_capped_at_16x_base_filters():
    assert PivotDetector(base_filters=2, depth=5).features == (2, 4, 8, 16, 32, 32)


def test_train_mode_emits_logits_and_eval_mode_probabilities():
    net = _tiny()  # instance norm, no dropout: train and eval compute the same features
    x = torch.randn(1, 1, 16, 16, 16)
    train_out = net.train()(x)
    with torch.no_grad():
        eval_out = net.eval()(x)
    assert train_out["heatmap"].min() < 0  # logits, near the -4.6 prior bias
    for key in ("heatmap", "malignancy"):
        assert 0.0 <= eval_out[key].min() and eval_out[key].max() <= 1.0
        torch.testing.assert_close(eval_out[key], torch.sigmoid(train_out[key]).detach())
    torch.testing.assert_close(eval_out["diameter"], train_out["diameter"].detach())


def test_heatmap_bias_starts_at_focal_prior():
    net = _tiny()
    assert net.heatmap_head.output.bias.item() == pytest.approx(-math.log(99.0))
    assert net.diameter_head.output.bias.item() == 0.0


def test_diameter_is_non_negative_mm():
    net = _tiny(head_channels=4)
    net.diameter_head.output.bias.data.fill_(-50.0)
    out = net(torch.randn(1, 1, 8, 8, 8))
    assert out["diameter"].min() >= 0.0


def test_indivisible_input_raises_with_requirement_and_size():
    net = _tiny(depth=4)
    with pytest.raises(ValueError, match=r"divisible by 2 \*\* depth = 16.*\[1, 1, 16, 24, 16\]"):
        net(torch.randn(1, 1, 16, 24, 16))


def test_wrong_input_rank_raises():
    with pytest.raises(ValueError, match="3 spatial dims"):
        _tiny()(torch.randn(1, 16, 16, 16))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"activation": "gelu"}, r"activation must be one of \['elu', 'leaky_relu', 'relu'\], got 'gelu'"),
        ({"depth": 6}, r"depth .* must be in 2\.\.5, got 6"),
        ({"output_stride": 3}, r"output_stride must be one of \[1, 2, 4\], got 3"),
        ({"depth": 2, "output_stride": 4}, "smaller than 2 \\*\\* depth = 4"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PivotDetector(**kwargs)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu"])
def test_each_activation_builds_and_runs(activation):
    out = _tiny(activation=activation, batch_norm=True, dropout=0.1)(torch.randn(2, 1, 8, 8, 8))
    assert out["heatmap"].shape == (2, 1, 8, 8, 8)


def test_parameter_groups_partition_all_parameters():
    net = _tiny(head_channels=4)
    groups = [list(net.encoder_parameters()), list(net.decoder_parameters()), list(net.head_parameters())]
    ids = [id(p) for group in groups for p in group]
    assert all(groups) and len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in net.parameters()}
    assert all(name.startswith(PivotDetector.ENCODER_PREFIXES) for name, _ in net.encoder.named_parameters("encoder"))


def test_frozen_encoder_gets_no_gradient():
    net = _tiny()
    for param in net.encoder_parameters():
        param.requires_grad_(False)
    sum(v.sum() for v in net(torch.randn(1, 1, 8, 8, 8)).values()).backward()
    assert all(p.grad is None for p in net.encoder_parameters())
    assert all(p.grad is not None for p in net.head_parameters())
    assert count_parameters(net, trainable_only=True) < count_parameters(net)


def test_gradients_reach_every_head():
    net = _tiny(output_stride=2)
    out = net(torch.randn(1, 1, 8, 8, 8))
    sum(v.square().mean() for v in out.values()).backward()
    for head in (net.heatmap_head, net.diameter_head, net.malignancy_head):
        assert head.output.weight.grad is not None and head.output.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["trace", "script"])
def test_torchscript_eval_model_matches_eager(mode):
    net = _tiny(depth=3, output_stride=2, head_channels=4).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        exported = torch.jit.trace(net, x, strict=False) if mode == "trace" else torch.jit.script(net)
    buffer = io.BytesIO()
    torch.jit.save(exported, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        expected, got = net(x), loaded(x)
    assert set(got) == set(OUTPUT_KEYS)
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(got[key], expected[key])
    assert 0.0 <= got["heatmap"].min() and got["heatmap"].max() <= 1.0


@pytest.mark.skipif(not (HAS_ORT and HAS_ONNX), reason="needs onnx and onnxruntime (pip install pivot-monai[export])")
def test_onnx_export_with_dict_outputs_runs_in_onnxruntime():
    net = _tiny(depth=3, output_stride=2).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (x,),
            buffer,
            dynamo=False,  # the dynamo exporter needs onnxscript
            input_names=["image"],
            output_names=list(OUTPUT_KEYS),
            dynamic_axes={"image": {0: "batch", 2: "depth", 3: "height", 4: "width"}},
        )
    session = ort.InferenceSession(buffer.getvalue())
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_KEYS)
    x2 = torch.randn(2, 1, 24, 16, 32)
    got = session.run(None, {"image": x2.numpy()})
    with torch.no_grad():
        expected = net(x2)
    for key, array in zip(OUTPUT_KEYS, got):
        torch.testing.assert_close(torch.from_numpy(array), expected[key], atol=1e-4, rtol=1e-4)


@_IGNORE_MONAI_INDEXING
def test_sliding_window_inferer_handles_dict_outputs_at_lower_resolution():
    net = _tiny(depth=3, output_stride=2).eval()
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.25, mode="gaussian")
    with torch.no_grad():
        out = inferer(torch.randn(1, 1, 24, 32, 20), net)
    assert set(out) == set(OUTPUT_KEYS)
    for value in out.values():
        assert value.shape == (1, 1, 12, 16, 10)
    assert 0.0 <= out["heatmap"].min() and out["heatmap"].max() <= 1.0


@_IGNORE_MONAI_INDEXING
def test_sliding_window_tiles_match_direct_predictions_at_lower_resolution():
    net = _tiny(depth=3, output_stride=2).eval()
    image = torch.randn(1, 1, 16, 16, 32)
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=1, overlap=0.0, mode="constant")
    with torch.no_grad():
        out = inferer(image, net)
        left, right = net(image[..., :16]), net(image[..., 16:])
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(out[key], torch.cat([left[key], right[key]], dim=-1))


def test_build_network_defaults_to_pivot_detector():
    net = build_network({"type": "basic_unet_multihead", "base_filters": 4, "depth": 2, "output_stride": 2})
    assert isinstance(net, PivotDetector)
    assert net.output_stride == 2 and net.features == (4, 8, 16)
    assert isinstance(build_network(None), PivotDetector)


def test_build_network_unknown_type_names_config_key_and_choices():
    with pytest.raises(ValueError, match=r"model\.type must be one of \['basic_unet_multihead', 'custom'\]"):
        build_network({"type": "retinanet"})


def test_build_network_unknown_key_is_rejected():
    with pytest.raises(ValueError, match=r"model\.base_filter"):
        build_network({"base_filter": 8})


def test_build_network_loads_custom_class_with_kwargs():
    net = build_network(
        {
            "type": "custom",
            "class": "torch.nn.Conv3d",
            "kwargs": {"in_channels": 1, "out_channels": 2, "kernel_size": 1},
            "base_filters": 16,  # architecture keys are ignored for custom classes
        }
    )
    assert isinstance(net, torch.nn.Conv3d) and net.out_channels == 2
    assert count_parameters(net) == 2 + 2


@pytest.mark.parametrize(
    ("path", "error", "match"),
    [
        ("no_such_package.nets.Net", ValueError, r"model\.class='no_such_package\.nets\.Net' could not be imported"),
        ("torch.nn.NoSuchNet", ValueError, r"'torch\.nn' has no attribute 'NoSuchNet'"),
        ("collections.OrderedDict", TypeError, r"must name a torch\.nn\.Module subclass"),
        ("", ValueError, r"model\.class must be a dotted class path"),
    ],
)
def test_build_network_custom_class_errors(path, error, match):
    with pytest.raises(error, match=match):
        build_network({"type": "custom", "class": path})


def test_decoder_skips_the_zero_pad_and_gives_the_same_outputs():
    # inputs are divisible by 2 ** depth, so UpCat's replicate pad only ever padded by zero voxels (a full copy)
    torch.manual_seed(0)
    net = PivotDetector(base_filters=4, depth=3, output_stride=2).eval()
    x = torch.randn(1, 1, 32, 24, 40)
    with torch.no_grad():
        fast = net(x)
        assert all(block.is_pad is False for block in net.decoder)
        for block in net.decoder:
            block.is_pad = True
        padded = net(x)
    for key in fast:
        torch.testing.assert_close(fast[key], padded[key], rtol=0, atol=0)
