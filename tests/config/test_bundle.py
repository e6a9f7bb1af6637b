"""The bundle entry point checks the config MONAI merged against the schema ``pivot train`` uses (config.bundle)."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys

import pytest
import yaml

from pivot_monai.config import ConfigKeyError, default_config_path, load_config, load_layered
from pivot_monai.config.bundle import (
    bundle_errors,
    check_merged_config,
    dropped_defaults,
    expected_cause,
    report_errors_in_one_line,
)
from pivot_monai.engines.validate import ConfigValueError
from tests.config.guide_blocks import block
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "bundle" / "configs"


def _monai_merged(*files, **overrides):
    """The config as ``python -m monai.bundle run --config_file [files] --id value`` merges it (MONAI's parser)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update(overrides)
    return parser.get()


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["demo.yaml"],
        ["demo.yaml", "demo_fast.yaml"],
        ["demo.yaml", "cpu_long.yaml"],
        ["features_example.yaml"],
        ["multi_gpu_train.yaml"],
    ],
)
def test_the_bundle_defaults_and_profiles_pass(extra):
    check_merged_config(_monai_merged(CONFIGS / "train.yaml", *(CONFIGS / e for e in extra)))


def test_the_fast_demo_profile_shortens_the_detector_and_the_classifier():
    from pivot_monai.inference.fpr import load_fpr_section

    demo = _monai_merged(CONFIGS / "train.yaml", CONFIGS / "demo.yaml")
    fast = _monai_merged(CONFIGS / "train.yaml", CONFIGS / "demo.yaml", CONFIGS / "demo_fast.yaml")
    assert (demo["training"]["epochs"], fast["training"]["epochs"], fast["validation"]["interval"]) == (22, 16, 16)
    # the same network; 1.5 mm voxels instead of demo.yaml's 1.25 mm
    assert fast["model"] == demo["model"] and {**fast["data"], "target_spacing": [1.25] * 3} == demo["data"]
    assert fast["data"]["target_spacing"] == [1.5, 1.5, 1.5]
    # make demo-fast preprocesses with demo_fast.yaml alone: the same preprocessing as the layered profile trains on
    from pivot_monai.data.preprocess import PreprocessConfig

    alone = PreprocessConfig.from_data_section(load_config(CONFIGS / "demo_fast.yaml")["data"])
    assert alone == PreprocessConfig.from_data_section(fast["data"])
    # pivot train-fpr --config demo_fast.yaml reads its fpr section over fpr.yaml's
    assert (load_fpr_section(None)["epochs"], load_fpr_section(CONFIGS / "demo_fast.yaml")["epochs"]) == (20, 14)


def test_the_cpu_long_profile_only_lengthens_the_demo_training():
    demo = _monai_merged(CONFIGS / "train.yaml", CONFIGS / "demo.yaml")
    long = _monai_merged(CONFIGS / "train.yaml", CONFIGS / "demo.yaml", CONFIGS / "cpu_long.yaml")
    assert (long["training"]["epochs"], long["validation"]["interval"]) == (72, 72)
    # the scans, the network and the inference it is evaluated with are the demo's
    assert all(long[k] == demo[k] for k in ("data", "model", "inference", "augmentation"))
    assert long.get("fpr") == demo.get("fpr")  # and make demo's classifier
    # every checkpoint of the curve is kept: epochs 12, 24, ..., 72
    keep, every = long["checkpointing"]["keep_last_n"], long["checkpointing"]["save_interval"]
    assert keep * every >= long["training"]["epochs"]
    mining = long["training"]["hard_negative_mining"]
    assert mining["enabled"] and mining["interval"] == 9 and demo["training"]["hard_negative_mining"]["interval"] == 5


def test_what_pivot_train_merges_from_the_guides_complete_example_passes():
    check_merged_config(load_config(block("complete_configuration_example")))


def test_an_unknown_key_on_the_command_line_is_named_with_a_suggestion():
    merged = _monai_merged(CONFIGS / "train.yaml", **{"training#learning_rat": 0.5})
    with pytest.raises(
        ConfigKeyError, match=r"unknown key 'training.learning_rat'; did you mean 'training.learning_rate'"
    ):
        check_merged_config(merged)


def test_a_section_replaced_by_a_later_file_names_the_dropped_defaults_and_the_fix(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("augmentation:\n  flip: {prob: 0.2}\n")
    merged = _monai_merged(CONFIGS / "train.yaml", mine)
    assert dropped_defaults(merged, load_layered([default_config_path()]))["augmentation"][:2] == ["elastic", "enabled"]
    with pytest.raises(ValueError) as exc:
        check_merged_config(merged)
    message = str(exc.value)
    assert "'augmentation' was given as a whole mapping" in message and "augmentation.intensity" in message
    assert "augmentation#flip#prob: 0.2" in message and "pivot train --config FILE" in message


def test_monai_ids_in_a_later_file_change_only_their_keys(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("augmentation#flip#prob: 0.2\ntraining#scheduler#t_max: 50\n")
    merged = _monai_merged(CONFIGS / "train.yaml", mine)
    check_merged_config(merged)
    assert merged["augmentation"]["flip"] == {"prob": 0.2, "axes": [0, 1, 2]} and "intensity" in merged["augmentation"]


def test_a_nested_mapping_dropping_defaults_is_found_below_the_section():
    merged = _monai_merged(CONFIGS / "train.yaml", **{"augmentation#flip": {"prob": 0.2}})
    with pytest.raises(
        ValueError, match=r"'augmentation#flip' was given .* dropped its defaults augmentation.flip.axes"
    ):
        check_merged_config(merged)


def test_the_guides_names_are_refused_with_pivots(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump(block("cosine_annealing")))
    merged = _monai_merged(CONFIGS / "train.yaml", mine)
    with pytest.raises(ConfigKeyError) as exc:
        check_merged_config(merged)
    assert "training.lr_scheduler -> training.scheduler" in str(exc.value)
    assert "training.scheduler.T_max -> training.scheduler.t_max" in str(exc.value)
    assert "pivot train --config FILE" in str(exc.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"training#scheduler#t_max": 0}, "training.scheduler.t_max must be an integer >= 1"),
        ({"training#scheduler#t_max": 4}, "must be larger than training.scheduler.warmup_epochs"),
        ({"training#scheduler#mode": "maximum"}, "training.scheduler.mode must be one of"),
        ({"logging#wandb#tags": "unet"}, "logging.wandb.tags must be a list of strings"),
        ({"data#annotations": 3}, "data.annotations must be the path of an annotations CSV"),
        ({"training#epochs": 2.5}, "training.epochs must be an integer >= 1, got 2.5"),
    ],
)
def test_a_wrong_value_names_its_key(override, message):
    with pytest.raises(ConfigValueError, match=message):
        check_merged_config(_monai_merged(CONFIGS / "train.yaml", **override))


def test_another_component_in_place_of_a_default_keeps_its_own_arguments():
    loader = {"_target_": "ThreadDataLoader", "dataset": "@train#dataset", "use_thread_workers": True}
    check_merged_config(_monai_merged(CONFIGS / "train.yaml", **{"train#dataloader": loader}))


def test_the_bundle_workflow_refuses_an_unknown_key_before_building_anything(tmp_path):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.yaml")],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        run_id="training",
        bundle_root=str(tmp_path),
        **{"training#learning_rat": 0.5},
    )
    with pytest.raises(RuntimeError) as wrapped:  # MONAI's wrapper, in process
        workflow.initialize()
    assert isinstance(expected_cause(wrapped.value), ConfigKeyError)
    with pytest.raises(ConfigKeyError, match="did you mean 'training.learning_rate'"), bundle_errors():
        workflow.initialize()
    assert not (tmp_path / "logs").exists()  # refused before the summary writer or any dataset


def test_an_expression_error_reaches_the_command_line_as_one_line(monkeypatch, caplog):
    monkeypatch.setattr(sys, "excepthook", lambda *a: pytest.fail("the previous hook was called"))
    monkeypatch.delenv("PIVOT_DEBUG", raising=False)
    report_errors_in_one_line()
    report_errors_in_one_line()  # installed once
    try:
        try:
            raise ValueError("training.epochs must be an integer >= 1, got 0")
        except ValueError as err:
            raise RuntimeError("Failed to evaluate ConfigExpression: ...") from err
    except RuntimeError as err:
        with caplog.at_level(logging.ERROR):
            sys.excepthook(type(err), err, err.__traceback__)
    (record,) = caplog.records
    assert record.getMessage() == "training.epochs must be an integer >= 1, got 0 (PIVOT_DEBUG=1 shows the traceback)"


def test_other_errors_and_debug_keep_the_traceback(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, err, tb: seen.append(err))
    report_errors_in_one_line()
    bug = RuntimeError("a bug")
    sys.excepthook(RuntimeError, bug, None)
    monkeypatch.setenv("PIVOT_DEBUG", "1")
    wrapped = RuntimeError("Failed to evaluate")
    wrapped.__cause__ = ValueError("bad")
    sys.excepthook(RuntimeError, wrapped, None)
    assert seen == [bug, wrapped]


@pytest.mark.slow  # a python -m monai.bundle process: ~10 s
def test_the_bundle_command_prints_one_line_for_a_replaced_section(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("augmentation:\n  random_flip: {probability: 0.2}\n")
    files = str([str(CONFIGS / "train.yaml"), str(mine)])
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", files],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out and "Failed to evaluate" not in out, out[-3000:]
    (line,) = [ln for ln in out.splitlines() if " ERROR " in ln]
    assert "augmentation.random_flip -> augmentation.flip" in line and "augmentation.flip.probability -> " in line


def test_pivot_train_reports_an_expression_error_in_one_line(tmp_path, capsys, monkeypatch):
    from pivot_monai.cli import main

    # The subject is the data-folder message: a host short of memory must not answer first with the memory check.
    monkeypatch.setenv("PIVOT_MEMORY_CHECK", "off")

    user = tmp_path / "user.yaml"
    config = copy.deepcopy(block("minimal_configuration"))
    config["data"].update(train_dir=str(tmp_path / "missing"), annotations=None)
    user.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(user), "--bundle-root", str(tmp_path / "bundle")]) == 2
    out = capsys.readouterr()
    errors = [line for line in (out.out + out.err).splitlines() if " ERROR " in line]  # the bundle's console
    assert len(errors) == 1 and "split folder" in errors[0] and "missing" in errors[0], errors
    assert "Failed to evaluate" not in out.out + out.err and "Traceback" not in out.out + out.err
