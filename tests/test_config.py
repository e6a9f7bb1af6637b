from __future__ import annotations

import pytest

from pivot_monai.cli import main
from pivot_monai.config import ConfigKeyError, default_config_path, load_config, load_yaml


def test_minimal_config_is_deep_merged_over_bundle_defaults(tmp_path):
    user = tmp_path / "my_train.yaml"
    user.write_text("training:\n  epochs: 3\n  optimizer: {type: sgd}\nmodel:\n  base_filters: 8\n")
    cfg = load_config(user)
    defaults = load_yaml(default_config_path())
    assert cfg["training"]["epochs"] == 3 and cfg["model"]["base_filters"] == 8
    assert cfg["training"]["optimizer"]["type"] == "sgd"
    assert cfg["training"]["optimizer"]["weight_decay"] == defaults["training"]["optimizer"]["weight_decay"]
    assert cfg["train"] == defaults["train"]


def test_unknown_key_names_it_and_suggests(tmp_path):
    user = tmp_path / "bad.yaml"
    user.write_text("training:\n  learning_rte: 0.1\n")
    with pytest.raises(
        ConfigKeyError, match=r"unknown key 'training.learning_rte'; did you mean 'training.learning_rate'"
    ):
        load_config(user)


def test_unknown_key_via_cli_exits_2(tmp_path, caplog):
    user = tmp_path / "bad.yaml"
    user.write_text("augmentaton:\n  flip: {prob: 0.1}\n")
    assert main(["train", "--config", str(user)]) == 2
    assert "did you mean 'augmentation'" in caplog.text


def test_experiment_name_separates_outputs(tmp_path):
    cfg = load_config(None, experiment_name="exp_001")
    assert cfg["checkpointing"]["dir"].endswith("/exp_001'")
    assert cfg["logging"]["log_dir"].endswith("/exp_001'")


def test_monai_hash_paths_and_mappings_merge_the_same_way(tmp_path):
    nested, hashed = tmp_path / "nested.yaml", tmp_path / "hashed.yaml"
    nested.write_text("data:\n  patch_size: [48, 48, 48]\n  lung_crop: {margin_mm: 6}\n")
    hashed.write_text("data#patch_size: [48, 48, 48]\ndata#lung_crop#margin_mm: 6\n")
    a, b = load_config(nested), load_config(hashed)
    assert a == b and a["data"]["lung_crop"]["enabled"] is True  # deep-merged: the sibling default stays


@pytest.mark.parametrize("command", ["infer", "evaluate", "preprocess"])
def test_every_entry_point_rejects_an_unknown_key_with_a_suggestion(tmp_path, caplog, command):
    user = tmp_path / "bad.yaml"
    user.write_text("inference:\n  overlapp: 0.5\n")
    args = {
        "infer": ["--checkpoint", str(tmp_path / "m.pt"), "-i", str(tmp_path), "-o", str(tmp_path / "out")],
        "evaluate": ["--checkpoint", str(tmp_path / "m.pt"), "-i", str(tmp_path), "-o", str(tmp_path / "out")],
        "preprocess": ["-i", str(tmp_path), "-o", str(tmp_path / "out")],
    }[command]
    assert main([command, *args, "--config", str(user)]) == 2
    assert "did you mean 'inference.overlap'" in caplog.text


def test_load_sections_gives_the_guide_sections_of_the_merged_config():
    from pivot_monai.config import load_sections

    sections = load_sections(default_config_path("demo.yaml"))
    assert set(sections) == {"data", "model", "inference", "device"}
    assert sections["model"]["base_filters"] == 8 and sections["inference"]["overlap"] == 0.25
