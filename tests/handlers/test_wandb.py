"""``logging.wandb`` -> the arguments of ``wandb.init`` (wandb itself need not be installed)."""

from __future__ import annotations

import pytest

from pivot_monai.handlers.wandb import wandb_init_kwargs


def test_entity_and_tags_reach_wandb_init():
    kwargs = wandb_init_kwargs("pivot-nodule-detection", "online", "your-team", ["unet", "aug"], {"dir": "w"}, {"e": 1})
    assert kwargs == {
        "project": "pivot-nodule-detection",
        "mode": "online",
        "config": {"e": 1},
        "entity": "your-team",
        "tags": ["unet", "aug"],
        "dir": "w",
    }


def test_the_defaults_leave_entity_and_tags_to_wandb():
    assert wandb_init_kwargs() == {"project": "pivot", "mode": "offline", "config": {}}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tags": "unet"}, "logging.wandb.tags must be a list of strings"),
        ({"mode": "cloud"}, "logging.wandb.mode must be offline, online or disabled"),
        ({"entity": "a", "init_kwargs": {"entity": "b"}}, "logging.wandb.entity and logging.wandb.init_kwargs.entity"),
    ],
)
def test_bad_wandb_settings_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        wandb_init_kwargs(**kwargs)
