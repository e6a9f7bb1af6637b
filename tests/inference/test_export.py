from __future__ import annotations

import numpy as np
import pytest
import torch

from pivot_monai.cli import main as pivot_main
from pivot_monai.inference.export import export_onnx, export_torchscript
from pivot_monai.inference.pipeline import infer_scans
from pivot_monai.inference.settings import InferenceSettings
from pivot_monai.metrics import read_submission_csv
from pivot_monai.networks import OUTPUT_KEYS, build_network
from pivot_monai.networks.checkpoint import OnnxModel, load_model
from tests.conftest import REPO_ROOT
from tests.inference.conftest import TINY_MODEL, tricky_geometries

STRIDE2 = {**TINY_MODEL, "output_stride": 2, "batch_norm": False}


def _eager(checkpoint, cfg=TINY_MODEL):
    return load_model(checkpoint, cfg)


def _assert_close(got, ref, atol=1e-4):
    for key in OUTPUT_KEYS:
        assert got[key].shape == ref[key].shape, key
        assert float((got[key] - ref[key]).abs().max()) <= atol, key


def test_torchscript_export_matches_eager(tiny_checkpoint, tmp_path):
    path = export_torchscript(tiny_checkpoint, TINY_MODEL, tmp_path / "model.ts", (16, 16, 16))
    ts = torch.jit.load(str(path))
    x = torch.rand(1, 1, 24, 16, 20)  # another shape than the export example: scripted, not traced
    with torch.no_grad():
        _assert_close(ts(x), _eager(tiny_checkpoint)(x))


def test_onnx_export_matches_eager_with_dynamic_axes_and_named_outputs(tmp_path):
    torch.manual_seed(1)
    ckpt = tmp_path / "stride2.pt"
    torch.save({"model": build_network(STRIDE2).state_dict()}, ckpt)  # wrapped checkpoints load too
    path = export_onnx(ckpt, STRIDE2, tmp_path / "model.onnx", (16, 16, 16))
    onnx_model = OnnxModel(path)
    assert [o.name for o in onnx_model.session.get_outputs()] == list(OUTPUT_KEYS)
    x = torch.rand(1, 1, 16, 32, 24)
    with torch.no_grad():
        ref = _eager(ckpt, STRIDE2)(x)
    _assert_close(onnx_model(x), ref)
    assert ref["heatmap"].shape[2:] == (8, 16, 12)


@pytest.mark.parametrize("export", [export_torchscript, export_onnx])
def test_an_export_that_fails_its_check_leaves_the_previous_file(export, tiny_checkpoint, tmp_path, monkeypatch):
    from pivot_monai.inference import export as export_module

    out = tmp_path / ("model.ts" if export is export_torchscript else "model.onnx")
    out.write_bytes(b"previous export")

    def fail(*args, **kwargs):
        raise export_module.ExportError("outputs differ")

    monkeypatch.setattr(export_module, "_compare", fail)
    with pytest.raises(export_module.ExportError):
        export(tiny_checkpoint, TINY_MODEL, out, (16, 16, 16))
    assert out.read_bytes() == b"previous export"
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]  # the failed export's temporary is gone


def test_checkpoint_that_does_not_fit_the_model_config_names_the_file(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"model\.pt.*do not match"):
        load_model(tiny_checkpoint, {**TINY_MODEL, "base_filters": 8})


def test_export_command_exit_codes(tiny_checkpoint, tiny_config, tmp_path):
    cfg = str(tiny_config())
    ok = [
        "export",
        "--checkpoint",
        str(tiny_checkpoint),
        "--format",
        "torchscript",
        "--output",
        str(tmp_path / "m.ts"),
        "--config",
        cfg,
        "--patch-size",
        "16",
        "16",
        "16",
    ]
    assert pivot_main(ok) == 0 and (tmp_path / "m.ts").is_file()
    missing = [
        "export",
        "--checkpoint",
        str(tmp_path / "none.pt"),
        "--format",
        "onnx",
        "--output",
        str(tmp_path / "m.onnx"),
        "--config",
        cfg,
    ]
    assert pivot_main(missing) == 2


def test_infer_with_the_exported_torchscript_gives_the_checkpoint_candidates(
    make_raw_dataset, tiny_checkpoint, tiny_config, tmp_path
):
    root, _ = make_raw_dataset(dict(list(tricky_geometries().items())[:1]))
    cfg = str(tiny_config(score_threshold=0.0))
    ts_path = export_torchscript(tiny_checkpoint, TINY_MODEL, tmp_path / "model.ts", (32, 32, 32))
    outputs = {}
    for name, source in (("ckpt", ["--checkpoint", str(tiny_checkpoint)]), ("ts", ["--model", str(ts_path)])):
        args = ["infer", *source, "--input", str(root), "--output", str(tmp_path / name), "--config", cfg]
        assert pivot_main([*args, "--device", "cpu"]) == 0
        outputs[name] = read_submission_csv(tmp_path / name / "candidates.csv")
    assert outputs["ckpt"].keys() == outputs["ts"].keys()
    for uid, ref in outputs["ckpt"].items():
        got = outputs["ts"][uid]
        assert len(ref) > 10 and len(got) == len(ref)
        # eager CPU inference runs every convolution on oneDNN (OneDNNConvolutions), TorchScript takes PyTorch's own
        # choice of kernel: the maps agree to float rounding, so near-tied peaks of this random network's flat maps
        # may swap places or shift by a refinement step; each candidate must still have its twin
        np.testing.assert_allclose(got.probability, ref.probability, atol=1e-5)
        dist = np.linalg.norm(got.world[:, None] - ref.world[None], axis=-1)
        twin = dist.argmin(axis=1)
        assert np.mean(dist.min(axis=1) < 0.01) > 0.9
        close = dist.min(axis=1) < 0.01
        np.testing.assert_allclose(got.diameter_mm[close], ref.diameter_mm[twin[close]], atol=1e-3)
        np.testing.assert_allclose(got.world[:10], ref.world[:10], atol=0.01)


def test_monai_ckpt_export_scripts_the_network_with_its_maps_stacked(tiny_checkpoint, tmp_path):
    from monai.bundle import ckpt_export

    path = tmp_path / "bundle_model.ts"
    ckpt_export(
        "network_def",
        filepath=str(path),
        ckpt_file=str(tiny_checkpoint),
        meta_file=str(REPO_ROOT / "bundle/configs/metadata.json"),
        config_file=[str(REPO_ROOT / "bundle/configs/train.yaml"), str(REPO_ROOT / "bundle/configs/inference.yaml")],
        # the network is built from this checkpoint's settings, never from a bundle/models/model.pt of the checkout
        checkpoint=str(tiny_checkpoint),
        **{"model#base_filters": 4, "model#depth": 2},
    )
    extra = {"metadata.json": "", "inference.json": ""}
    ts = torch.jit.load(str(path), _extra_files=extra)
    assert b"PIVOT" in extra["metadata.json"] and b"network_def" in extra["inference.json"]
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():  # inference.yaml's network_def: (B, 3, ...) heatmap, diameter, malignancy as channels
        stacked, ref = ts(x), _eager(tiny_checkpoint)(x)
    _assert_close({k: stacked[:, i : i + 1] for i, k in enumerate(OUTPUT_KEYS)}, ref)


@pytest.mark.slow
def test_default_size_detector_exports_and_infers_identically_with_tta(make_raw_dataset, tmp_path):
    root, _ = make_raw_dataset(dict(list(tricky_geometries().items())[:1]))
    torch.manual_seed(0)
    net = build_network({})
    with torch.no_grad():  # spread the random heatmap over [0, 1] so peaks are distinct (no near-ties in the ranking)
        net.heatmap_head.output.weight.mul_(200.0)
    ckpt = tmp_path / "default.pt"
    torch.save(net.state_dict(), ckpt)
    onnx_path = export_onnx(ckpt, {}, tmp_path / "default.onnx", (64, 64, 64))
    ts_path = export_torchscript(ckpt, {}, tmp_path / "default.ts", (64, 64, 64))
    inference = {"score_threshold": 0.0, "tta": {"enabled": True, "num_augmentations": 4}}
    results = {}
    for name, model in (("ckpt", ckpt), ("onnx", onnx_path), ("ts", ts_path)):
        report = infer_scans(root, tmp_path / name, model, InferenceSettings.from_config({"inference": inference}))
        assert not report["failed"] and report["settings"]["tta"][:2] == ["identity", "flip_x"]
        results[name] = read_submission_csv(tmp_path / name / "candidates.csv")
    for name in ("onnx", "ts"):
        for uid, ref in results["ckpt"].items():
            got = results[name][uid]
            assert len(got) == len(ref) == 100
            np.testing.assert_allclose(got.probability, ref.probability, atol=1e-5)
            np.testing.assert_allclose(got.world, ref.world, atol=1e-2)  # refinement amplifies 1e-6


@pytest.mark.parametrize("setting", [None, False])
def test_infer_command_applies_device_reuse_freed_memory(tiny_config, tmp_path, monkeypatch, setting):
    from pivot_monai.host import allocator

    calls = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda enabled=True: calls.append(enabled) or enabled)
    cfg = tiny_config()
    if setting is not None:
        cfg.write_text(cfg.read_text() + f"device: {{reuse_freed_memory: {str(setting).lower()}}}\n")
    args = ["infer", "--checkpoint", str(tmp_path / "missing.pt"), "-i", str(tmp_path), "-o", str(tmp_path / "out")]
    assert (
        pivot_main([*args, "--config", str(cfg)]) == 2
    )  # the missing checkpoint, after the host settings were applied
    assert calls == ([True] if setting is None else [])  # applied by default, not called when disabled
