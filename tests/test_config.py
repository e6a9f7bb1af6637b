from __future__ import annotations

import pytest

from pivot_monai.cli import main
from pivot_monai.config import ConfigKeyError, default_config_path, load_yaml
from pivot_monai.train import build_training_config


def test_minimal_config_is_deep_merged_over_bundle_defaults(tmp_path):
    user = tmp_path / "my_train.yaml"
    user.write_text("training:\n  epochs: 3\n  optimizer: {type: sgd}\nmodel:\n  base_filters: 8\n")
    cfg = build_training_config(user)
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
        build_training_config(user)


def test_unknown_key_via_cli_exits_2(tmp_path, caplog):
    user = tmp_path / "bad.yaml"
    user.write_text("augmentaton:\n  flip: {prob: 0.1}\n")
    assert main(["train", "--config", str(user)]) == 2
    assert "did you mean 'augmentation'" in caplog.text


def test_experiment_name_separates_outputs(tmp_path):
    cfg = build_training_config(None, experiment_name="exp_001")
    assert cfg["checkpointing"]["dir"].endswith("/exp_001'")
    assert cfg["logging"]["log_dir"].endswith("/exp_001'")
