"""engines.memory: a training step's memory from the network's saved activations, refused before anything is built
when it cannot fit, with the keys to change."""

from __future__ import annotations

import logging

import pytest
import yaml

from pivot_monai.cli import main
from pivot_monai.config import load_config
from pivot_monai.engines import memory
from pivot_monai.engines.validate import ConfigValueError

GIB = 2**30
SMALL = {"base_filters": 4, "depth": 2}


def test_saved_activations_scale_with_the_voxels_and_the_width():
    small, large = (memory.activation_bytes_per_voxel(SMALL, probe=p) for p in (32, 64))
    assert large == pytest.approx(small, rel=0.05)  # per voxel: the same at twice the side
    wider = memory.activation_bytes_per_voxel({"base_filters": 8, "depth": 2}, probe=32)
    assert 1.7 * small < wider < 2.3 * small  # twice the channels, about twice the bytes


@pytest.fixture
def ram(monkeypatch):
    def set_available(gib: float) -> None:
        monkeypatch.setattr(memory, "available_memory", lambda device_type="cpu": (int(gib * GIB), "RAM"))

    return set_available


def _config(**data):
    config = load_config(None)
    config["data"].update(data)
    return config


def test_the_default_config_fits_in_8_gib_without_a_word(ram, caplog):
    ram(8)
    with caplog.at_level(logging.WARNING, logger=memory.__name__):
        estimate = memory.check_training_memory(_config())
    assert estimate.patches == 8 and estimate.patch_size == (64, 64, 64) and not caplog.records
    assert 1.5 * GIB < estimate.low < estimate.high < 8 * GIB


def test_a_step_that_may_not_fit_is_a_warning_with_the_fix(ram, caplog):
    ram(4)
    with caplog.at_level(logging.WARNING, logger=memory.__name__):
        memory.check_training_memory(_config())
    assert "may not fit" in caplog.text and "data.patch_size" in caplog.text


def test_a_256_cube_patch_is_refused_naming_the_keys_and_a_patch_that_fits(ram):
    ram(8)
    with pytest.raises(ConfigValueError) as exc:
        memory.check_training_memory(_config(patch_size=[256, 256, 256]))
    message = str(exc.value)
    assert exc.value.key == "data.patch_size" and "cannot fit" in message and "RAM has 8.0 GiB" in message
    assert "training.batch_size" in message and "e.g. [64, 64, 64] fits" in message


def test_the_largest_progressive_stage_counts(ram):
    ram(8)
    config = _config()
    config["training"]["progressive"] = {"enabled": True, "stages": [{"epochs": 1, "patch_size": [192] * 3}]}
    with pytest.raises(ConfigValueError, match=r"data.patch_size \[192, 192, 192\]"):
        memory.check_training_memory(config)


def test_expressions_and_the_off_switch_skip_the_check(ram, monkeypatch):
    ram(0.001)
    assert memory.check_training_memory(_config(patch_size="$@data#base_patch")) is None
    monkeypatch.setenv("PIVOT_MEMORY_CHECK", "off")
    assert memory.check_training_memory(_config()) is None


def test_a_cgroup_limit_lowers_the_memory_available(tmp_path):
    (tmp_path / "memory.max").write_text("4294967296\n")
    (tmp_path / "memory.current").write_text(str(3 * GIB))
    (tmp_path / "memory.stat").write_text(f"anon 123\ninactive_file {GIB // 2}\n")
    assert memory.cgroup_available(tmp_path) == GIB + GIB // 2
    (tmp_path / "memory.max").write_text("max\n")
    assert memory.cgroup_available(tmp_path) is None


def test_pivot_train_refuses_an_oversized_patch_in_one_line_before_building_anything(ram, tmp_path, caplog):
    ram(8)
    config = tmp_path / "big.yaml"
    config.write_text(yaml.safe_dump({"data": {"patch_size": [256, 256, 256]}}))
    with caplog.at_level(logging.ERROR):
        code = main(["train", "--config", str(config), "--bundle-root", str(tmp_path / "b")])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert code == 2 and len(errors) == 1 and "data.patch_size [256, 256, 256]" in errors[0], errors
    assert not (tmp_path / "b").exists() and not any(tmp_path.rglob("config_resolved.yaml"))


def test_a_validation_window_that_cannot_fit_is_refused_naming_the_inference_keys(ram):
    # the training step fits; the whole-volume windows of validation and mining do not (the OOM of a real run)
    ram(8)
    config = _config()
    config["inference"].update(roi_size=[384, 384, 384], sw_batch_size=4)
    with pytest.raises(ConfigValueError) as exc:
        memory.check_training_memory(config)
    message = str(exc.value)
    assert exc.value.key == "inference.roi_size" and "cannot fit" in message and "RAM has 8.0 GiB" in message
    assert "inference.sw_batch_size=4 windows of inference.roi_size [384, 384, 384]" in message
    side = int(message.split("inference.roi_size (e.g. [")[1].split(",")[0])
    assert 64 <= side < 384 and side % 16 == 0  # a window that would fit, a multiple of 2 ** depth


def test_too_many_windows_per_forward_name_sw_batch_size(ram):
    ram(8)
    config = _config()
    per_window = memory.estimate_inference_memory(
        {**config, "inference": {"roi_size": [160] * 3, "sw_batch_size": 1}},
        memory.estimate_training_memory(config),
    )
    assert per_window.high < 8 * GIB  # one 160^3 window fits ...
    config["inference"].update(roi_size=[160, 160, 160], sw_batch_size=64)
    with pytest.raises(ConfigValueError, match="1 window fits") as exc:
        memory.check_training_memory(config)  # ... sixty-four of them at once do not
    assert exc.value.key == "inference.sw_batch_size"


def test_a_null_roi_size_checks_the_patch_sized_window(ram):
    ram(8)
    config = _config()
    config["inference"].update(roi_size=None, sw_batch_size=2)
    estimate = memory.estimate_inference_memory(config, memory.estimate_training_memory(config))
    assert estimate.roi_size == (64, 64, 64) and estimate.windows == 2


def test_pivot_train_refuses_a_validation_window_that_cannot_fit_in_one_line(ram, tmp_path, caplog):
    ram(8)
    config = tmp_path / "wide.yaml"
    config.write_text(yaml.safe_dump({"inference": {"roi_size": [512, 512, 512], "sw_batch_size": 1}}))
    with caplog.at_level(logging.ERROR):
        code = main(["train", "--config", str(config), "--bundle-root", str(tmp_path / "b")])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert code == 2 and len(errors) == 1 and "inference.roi_size [512, 512, 512]" in errors[0], errors
    assert not (tmp_path / "b").exists()
