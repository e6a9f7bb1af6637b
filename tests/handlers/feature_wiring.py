"""The training-feature wiring of ``bundle/configs/train.yaml``, applied to a copy while the real file lacks it.

:func:`wired_train_config` returns ``bundle/configs/train.yaml`` itself once it holds the wiring (a
``training.curriculum`` section), else a copy in ``directory`` with the same additions made structurally: new
imports and ``training`` keys, ``NoduleCropSamplerd`` in place of ``SpatialPadd`` + ``RandCropByPosNegLabeld``,
``StagedCenterSpatialCropd`` in place of ``CenterSpatialCropd``, the four handlers appended to ``train#handlers`` and
the hard-negative pool in the resumable checkpoints. Tests that run the bundle through it pass before and after the
lines are applied to the real file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO_ROOT

__all__ = ["CONFIGS", "FEATURES_EXAMPLE", "bundle_overrides", "wired_train_config"]

CONFIGS = REPO_ROOT / "bundle" / "configs"
FEATURES_EXAMPLE = CONFIGS / "features_example.yaml"

IMPORTS = [
    f"$import pivot_monai.{m}"
    for m in (
        "handlers.curriculum",
        "handlers.hard_negative_mining",
        "handlers.transfer",
        "transforms.hard_negatives",
        "transforms.sampling",
        "transforms.stages",
    )
]
TRAINING = {
    "hard_negative_mining": {
        "enabled": False,
        "neg_pos_ratio": 3,
        "batch_hard_ratio": 0.5,
        "interval": 5,
        "pool_size": 20,
        "subset_fraction": 1.0,
        "score_threshold": 0.5,
    },
    "curriculum": {
        "enabled": False,
        "strategy": "size_based",
        "stages": [
            {"epochs": 10, "min_diameter": 8.0},
            {"epochs": 10, "min_diameter": 5.0},
            {"epochs": 80, "min_diameter": 0.0},
        ],
    },
    "progressive": {
        "enabled": False,
        "stages": [
            {"epochs": 30, "patch_size": [48, 48, 48], "batch_size": 4},
            {"epochs": 70, "patch_size": [64, 64, 64], "batch_size": 2},
        ],
    },
    "pretrained": {"checkpoint": None, "strict": False, "freeze_encoder": False, "freeze_epochs": 5},
}
TRAIN = {
    "stages": "$pivot_monai.transforms.stages.StageSchedule.from_config(@training#curriculum, "
    "@training#progressive, @model#depth)",
    "stage_state": {"_target_": "pivot_monai.transforms.stages.StageState"},
    "hard_negative_pool": {
        "_target_": "pivot_monai.transforms.hard_negatives.HardNegativePool",
        "pool_size": "@training#hard_negative_mining#pool_size",
        "path": "$@checkpointing#dir + '/hard_negative_pool.json'",
    },
    "crop_ratios": "$pivot_monai.transforms.sampling.crop_ratios(@data#pos_neg_ratio, @training#hard_negative_mining)",
    "mining_dataset": {"_target_": "Dataset", "data": "@train#datalist", "transform": "@validate#preprocessing"},
}
SAMPLER = {
    "_target_": "pivot_monai.transforms.sampling.NoduleCropSamplerd",
    "keys": ["image", "label"],
    "label_key": "label",
    "spatial_size": "@train#crop_size",
    "num_samples": "@data#samples_per_volume",
    "pos": "$@train#crop_ratios[0]",
    "neg": "$@train#crop_ratios[1]",
    "hard_ratio": "$@train#crop_ratios[2]",
    "pool": "@train#hard_negative_pool",
    "stage": "@train#stage_state",
    "crop_margin": "@data#crop_margin",
}
HANDLERS = [
    {
        "_target_": "pivot_monai.handlers.transfer.PretrainedLoader",
        "_disabled_": "$not @training#pretrained#checkpoint",
        "network": "@network",
        "checkpoint": "@training#pretrained#checkpoint",
        "strict": "@training#pretrained#strict",
    },
    {
        "_target_": "pivot_monai.handlers.transfer.UnfreezeEncoderHandler",
        "_disabled_": "$not @training#pretrained#freeze_encoder",
        "network": "@network",
        "freeze_epochs": "@training#pretrained#freeze_epochs",
    },
    {
        "_target_": "pivot_monai.handlers.curriculum.StageHandler",
        "schedule": "@train#stages",
        "state": "@train#stage_state",
        "summary_writer": "@summary_writer",
    },
    {
        "_target_": "pivot_monai.handlers.hard_negative_mining.HardNegativeMiningHandler",
        "_disabled_": "$not @training#hard_negative_mining#enabled",
        "pool": "@train#hard_negative_pool",
        "network": "@network",
        "dataset": "@train#mining_dataset",
        "inferer": "@validate#inferer",
        "interval": "@training#hard_negative_mining#interval",
        "score_threshold": "@training#hard_negative_mining#score_threshold",
        "subset_fraction": "@training#hard_negative_mining#subset_fraction",
        "spacing": "@data#target_spacing",
        "output_stride": "@model#output_stride",
        "decode": "$pivot_monai.inference.DecodeSettings.from_config(@inference)",
        "amp": "@device#amp",
        "summary_writer": "@summary_writer",
    },
]


def _wire(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg["imports"] = [*cfg["imports"], *IMPORTS]
    cfg["training"].update(TRAINING)
    train = cfg["train"]
    rest = {k: v for k, v in train.items() if k not in ("crop_size", "datalist")}
    cfg["train"] = {"crop_size": train["crop_size"], "datalist": train["datalist"], **TRAIN, **rest}
    transforms = []
    for t in cfg["train"]["preprocessing"]["transforms"]:
        target = t.get("_target_")
        if target == "SpatialPadd":
            continue
        if target == "RandCropByPosNegLabeld":
            t = dict(SAMPLER)
        elif target == "CenterSpatialCropd":
            t = {
                **t,
                "_target_": "pivot_monai.transforms.sampling.StagedCenterSpatialCropd",
                "stage": "@train#stage_state",
            }
        transforms.append(t)
    cfg["train"]["preprocessing"]["transforms"] = transforms
    cfg["train"]["handlers"] = [*cfg["train"]["handlers"], *HANDLERS]
    for name, key in (("checkpoint_saver", "save_dict"), ("checkpoint_loader", "load_dict")):
        cfg["train"][name][key] = {**cfg["train"][name][key], "hard_negative_pool": "@train#hard_negative_pool"}
    return cfg


def wired_train_config(directory: Path) -> Path:
    """``bundle/configs/train.yaml`` if it is wired, else a wired copy written into ``directory``."""
    source = CONFIGS / "train.yaml"
    cfg = yaml.safe_load(source.read_text())
    if "curriculum" in cfg.get("training", {}):
        return source
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "train.yaml"
    target.write_text(yaml.safe_dump(_wire(cfg), sort_keys=False, width=120))
    return target


def bundle_overrides(pairs: list[str], **extra: Any) -> dict[str, Any]:
    """``{id: value}`` from ``["--id", "value", ...]`` CLI pairs (YAML literals) plus ``extra``."""
    out = {k.lstrip("-"): yaml.safe_load(v) for k, v in zip(pairs[::2], pairs[1::2])}
    out.update(extra)
    return out
