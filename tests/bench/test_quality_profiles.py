"""benchmarks.bench_quality: the training profiles it can train first are real bundle configs that pass."""

from __future__ import annotations

import pytest
from monai.bundle import ConfigParser

from benchmarks.bench_quality import TRAIN_PROFILES
from benchmarks.common import CONFIG_DIR, DEMO_CONFIG
from pivot_monai.config.bundle import check_merged_config


@pytest.mark.parametrize("name", sorted(TRAIN_PROFILES))
def test_each_training_profile_layers_existing_configs_that_pass(name):
    files = [CONFIG_DIR / "train.yaml", DEMO_CONFIG, *TRAIN_PROFILES[name]["layers"]]
    assert all(f.is_file() for f in files)
    merged = ConfigParser.load_config_files([str(f) for f in files])
    check_merged_config(merged)
    expected = {"demo": 22, "full": 72}[name]
    assert merged["training"]["epochs"] == expected
