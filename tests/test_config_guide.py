"""The training guide's names as an input schema (pivot_monai.config.guide_names): each key's effect."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from pivot_monai.config import load_config
from pivot_monai.networks import build_network
from tests.conftest import REPO_ROOT

GUIDE = REPO_ROOT.parent / "shared" / "guide" / "TRAINING.md"
COPIES = Path(__file__).parent / "guide"


def _guide_block(heading: str) -> dict:
    """The first YAML block under ``heading`` in the guide itself."""
    if not GUIDE.is_file():
        pytest.skip(f"{GUIDE} not present")
    text = GUIDE.read_text()
    start = text.index(heading)
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", text[start:], re.S).group(1))


@pytest.mark.parametrize("source", ["guide", "copy"])
def test_the_guides_unet_block_builds_the_detector_it_describes(source, tmp_path):
    if source == "guide":
        block = _guide_block("### U-Net Configuration")
    else:
        block = yaml.safe_load((COPIES / "unet_configuration.yaml").read_text())
    user = tmp_path / "model.yaml"
    user.write_text(yaml.safe_dump(block))
    model = load_config(user)["model"]
    assert model["type"] == "basic_unet_multihead" and model["batch_norm"] is True and model["dropout"] == 0.1
    assert "out_channels" not in model and "in_channels" not in model
    net = build_network(model)
    assert net.features[0] == 32 and len(net.features) == 5  # base_filters 32, depth 4
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())
    assert {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    assert any(isinstance(m, torch.nn.ReLU) for m in net.modules())


def test_use_dropout_false_means_no_dropout():
    assert load_config({"model": {"use_dropout": False, "dropout_rate": 0.3}})["model"]["dropout"] == 0.0


@pytest.mark.parametrize("key", ["in_channels", "out_channels"])
def test_channel_counts_other_than_one_are_refused_with_the_reason(key):
    with pytest.raises(ValueError, match=rf"model.{key} must be 1 .*remove the key or set it to 1"):
        load_config({"model": {key: 3}})


def test_checkpointing_save_dir_is_the_checkpoint_folder():
    assert load_config({"checkpointing": {"save_dir": "checkpoints"}})["checkpointing"]["dir"] == "checkpoints"


@pytest.mark.parametrize(
    "heading, copy, expected",
    [
        ("#### AdamW (Recommended)", "adamw.yaml", (torch.optim.AdamW, 0.001, {"weight_decay": 1e-4, "eps": 1e-8})),
        ("#### SGD with Momentum", "sgd_momentum.yaml", (torch.optim.SGD, 0.01, {"momentum": 0.9, "nesterov": True})),
    ],
)
@pytest.mark.parametrize("source", ["guide", "copy"])
def test_the_guides_optimizer_blocks_build_the_optimizer_they_describe(heading, copy, expected, source):
    from pivot_monai.engines.optim import build_optimizer

    block = _guide_block(heading) if source == "guide" else yaml.safe_load((COPIES / copy).read_text())
    training = load_config(block)["training"]
    optimizer = build_optimizer(torch.nn.Linear(2, 2).parameters(), training["learning_rate"], training["optimizer"])
    cls, lr, options = expected
    assert type(optimizer) is cls and optimizer.param_groups[0]["lr"] == lr
    for key, value in options.items():
        assert optimizer.param_groups[0][key] == value, key


def test_the_optimizer_short_form_and_conflicting_learning_rates():
    assert load_config({"training": {"optimizer": "sgd"}})["training"]["optimizer"]["type"] == "sgd"
    with pytest.raises(ValueError, match="disagree"):
        load_config({"training": {"learning_rate": 0.1, "optimizer": {"learning_rate": 0.2}}})


def test_froc_score_is_the_validation_cpm_for_best_checkpoints():
    assert (
        load_config({"validation": {"save_best_metric": "froc_score"}})["validation"]["save_best_metric"] == "val_froc"
    )
