"""Self-describing models: what a model file records, how loaders use it, and when a config contradicts it."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from pivot_monai.cli import main as pivot_main
from pivot_monai.inference.export import export_checkpoint, export_onnx, export_torchscript
from pivot_monai.inference.fpr import CandidateClassifier
from pivot_monai.inference.model_settings import ModelConfigError, embedded_classifier, settings_for_model
from pivot_monai.inference.predictor import Predictor
from pivot_monai.networks import build_network
from pivot_monai.networks.checkpoint import load_model, save_model
from pivot_monai.networks.classifier import MultiScaleClassifier
from pivot_monai.networks.metadata import describe_model, read_classifier_state, read_metadata
from pivot_monai.networks.stacked import StackedOutputs
from tests.inference.conftest import TINY_DATA, TINY_INFERENCE, tiny_settings, tricky_geometries

NET = {"base_filters": 4, "depth": 2, "output_stride": 2}
DATA = {**TINY_DATA, "target_spacing": [2.0, 2.0, 2.0]}


@pytest.fixture
def described(tmp_path):
    """A self-describing tiny model.pt: 2 mm, 4 filters, stride 2, score threshold 0."""
    torch.manual_seed(0)
    sections = {"model": NET, "data": DATA, "inference": {**TINY_INFERENCE, "score_threshold": 0.0}}
    meta = describe_model(sections, run_id="abc123", experiment="tiny")
    return save_model(tmp_path / "model" / "model.pt", build_network(NET).state_dict(), meta)


def _config(tmp_path, **sections):
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(sections))
    return path


def _classifier_beside(model):
    torch.manual_seed(1)
    net = MultiScaleClassifier(num_scales=2, channels=[4, 8], hidden=8)
    return CandidateClassifier(net, (20.0, 32.0), 8, 0.3, detector="model.pt").save(model.with_name("fpr.pt"))


def test_a_checkpoint_records_its_model_preprocessing_inference_versions_and_run(described):
    meta = read_metadata(described)
    assert meta["config"]["model"] == NET and meta["config"]["data"]["target_spacing"] == [2.0, 2.0, 2.0]
    assert meta["config"]["inference"]["score_threshold"] == 0.0
    assert meta["run_id"] == "abc123" and meta["experiment"] == "tiny"
    assert set(meta["versions"]) == {"pivot", "monai", "torch"} and meta["fpr"] is None


def test_a_bare_state_dict_has_no_description_and_still_loads_with_its_config(tmp_path, caplog):
    path = tmp_path / "old.pt"
    torch.save(build_network(NET).state_dict(), path)
    assert read_metadata(path) is None
    assert load_model(path, NET).output_stride == 2
    with pytest.raises(ValueError, match="do not match"):
        load_model(path)  # the defaults are not what it was trained with
    assert settings_for_model(path, _config(tmp_path, data=DATA)).preprocess.target_spacing == (2.0, 2.0, 2.0)
    assert "does not record its preprocessing" not in caplog.text
    settings_for_model(path)  # no config: the defaults, with a warning saying so
    assert "does not record its preprocessing" in caplog.text


def test_load_model_builds_the_recorded_network_and_names_contradicting_keys(described):
    assert load_model(described).output_stride == 2
    with pytest.raises(ValueError, match=r"model\.base_filters: 16 \(config\) vs 4 \(model\)"):
        load_model(described, {**NET, "base_filters": 16})


def test_settings_come_from_the_model_and_the_users_own_keys(described, tmp_path):
    settings = settings_for_model(described, device="cpu")
    assert settings.preprocess.target_spacing == (2.0, 2.0, 2.0) and settings.decode.score_threshold == 0.0
    assert settings.model["base_filters"] == 4
    changed = settings_for_model(described, _config(tmp_path, inference={"overlap": 0.5}), overlap=None)
    assert changed.overlap == 0.5 and changed.preprocess.target_spacing == (2.0, 2.0, 2.0)
    assert settings_for_model(described, None, overlap=0.5).overlap == 0.5  # the flags come last


def test_a_config_that_contradicts_the_model_is_an_error_naming_every_key(described, tmp_path):
    config = _config(tmp_path, data={"target_spacing": [1.5, 1.5, 1.5]}, model={"depth": 3, "base_filters": 4})
    with pytest.raises(ModelConfigError) as info:
        settings_for_model(described, config)
    message = str(info.value)
    assert "data.target_spacing" in message and "model.depth: 3 (config) vs 2 (model)" in message
    assert "base_filters" not in message  # agrees with the model


def test_settings_built_without_the_model_are_refused_by_the_predictor(described):
    with pytest.raises(ModelConfigError, match="target_spacing"):
        Predictor.from_settings(described, tiny_settings(model=NET))  # 1.5 mm settings for a 2 mm model


def test_exports_carry_the_description_and_the_classifier_beside_the_checkpoint(described, tmp_path):
    _classifier_beside(described)
    ts = export_torchscript(described, None, tmp_path / "model.ts", (16, 16, 16))
    onnx = export_onnx(described, None, tmp_path / "model.onnx", (16, 16, 16))
    pt = export_checkpoint(described, None, tmp_path / "published" / "model.pt")
    for path in (ts, onnx, pt):
        meta = read_metadata(path)
        assert meta["run_id"] == "abc123" and meta["config"]["data"]["target_spacing"] == [2.0, 2.0, 2.0], path
        assert meta["fpr"]["fov_mm"] == [20.0, 32.0] and meta["fpr"]["fusion_weight"] == 0.3, path
        state = read_classifier_state(path)
        assert state is not None and state["patches"]["grid"] == 8, path
    classifier = embedded_classifier(pt, {"enabled": True})
    assert classifier.fov_mm == (20.0, 32.0) and classifier.fusion_weight == 0.3
    assert embedded_classifier(pt, {"enabled": False}) is None


def test_an_early_exports_pivot_json_is_read_as_its_model_and_patch(tmp_path):
    net = build_network(NET).eval()
    extra = {"pivot.json": json.dumps({"model": NET, "patch_size": [16, 16, 16], "outputs": ["heatmap"]})}
    torch.jit.save(torch.jit.script(net), str(tmp_path / "old.ts"), _extra_files=extra)
    meta = read_metadata(tmp_path / "old.ts")
    assert meta["metadata_format"] == 0 and meta["config"]["model"] == NET
    assert meta["config"]["data"] == {"patch_size": [16, 16, 16]}


def test_stacked_outputs_share_the_state_dict_and_load_wrapped_checkpoints(described):
    stacked = StackedOutputs(build_network(NET))
    stacked.load_state_dict(torch.load(described, weights_only=True))  # {"model", "pivot"}: unwrapped
    assert set(stacked.state_dict()) == set(build_network(NET).state_dict())
    assert json.loads(stacked.pivot_metadata or "{}") == {}


def test_pivot_infer_needs_only_the_checkpoint_and_refuses_a_contradicting_config(
    described, make_raw_dataset, tmp_path, caplog
):
    root, _ = make_raw_dataset(dict(list(tricky_geometries().items())[:1]))
    _classifier_beside(described)
    published = export_checkpoint(described, None, tmp_path / "published" / "model.pt")  # fpr.pt goes inside
    assert pivot_main(["infer", "--checkpoint", str(published), "-i", str(root), "-o", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "infer_report.json").read_text())
    assert (
        report["settings"]["preprocess"]["target_spacing"] == [2.0, 2.0, 2.0]
        and report["settings"]["output_stride"] == 2
    )
    assert report["settings"]["fpr"]["checkpoint"] == str(published)  # the classifier inside the model
    bad = _config(tmp_path, data={"target_spacing": [1.5, 1.5, 1.5]})
    code = pivot_main(
        ["infer", "--checkpoint", str(published), "-i", str(root), "-o", str(tmp_path / "x"), "-c", str(bad)]
    )
    assert code != 0 and "data.target_spacing" in caplog.text


def test_train_fpr_takes_the_detectors_own_settings_and_refuses_a_contradicting_config(
    described, make_raw_dataset, tmp_path
):
    from pivot_monai.inference.fpr_train import train_classifier

    root, _ = make_raw_dataset(dict(list(tricky_geometries().items())[:2]))
    tiny_fpr = {"fov_mm": [12, 24], "grid": 8, "channels": [4, 8], "hidden": 8, "epochs": 1, "batch_size": 8}
    # no data/model keys: the 2 mm, stride-2 network of the model's description (train.yaml's defaults differ)
    report = train_classifier(root, tmp_path / "fpr.pt", detector=described, config={"fpr": tiny_fpr})
    assert report["preprocess"]["target_spacing"] == [2.0, 2.0, 2.0]
    with pytest.raises(ModelConfigError, match="data.target_spacing"):
        train_classifier(
            root, tmp_path / "x.pt", detector=described, config={"fpr": tiny_fpr, "data": {"target_spacing": [3, 3, 3]}}
        )
