"""The guide's Minimal and Complete configurations, verbatim, through ``pivot train``'s workflow.

A working folder laid out as the guide's (``data/processed/{train,val}``, ``data/annotations.csv``) holds the tiny
processed dataset; the training workflow is initialised from each configuration (everything built, nothing trained)
and the built objects are checked against what the guide writes.
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch

from pivot_monai.config import load_config
from pivot_monai.engines.validate import validate_training_config
from tests.config.guide_blocks import block


@pytest.fixture(scope="module")
def guide_folder(tiny_processed, tmp_path_factory):
    """A working folder in the guide's layout over the tiny processed dataset and its annotations CSV."""
    root = tmp_path_factory.mktemp("guide_folder")
    (root / "data").mkdir()
    (root / "data" / "processed").symlink_to(tiny_processed, target_is_directory=True)
    shutil.copy(tiny_processed.parent / "raw" / "annotations.csv", root / "data" / "annotations.csv")
    return root


def _initialise(config, folder):
    """What ``pivot train --config`` runs, up to the trainer's start: merged, validated, the workflow initialised."""
    from pivot_monai.train import initialize_training_workflow

    cwd, check = os.getcwd(), os.environ.get("PIVOT_MEMORY_CHECK")
    os.chdir(folder)
    # the complete example is sized for a GPU (128^3 patches): on a CPU test host the memory check would refuse it
    # before the objects these tests inspect exist (tests/engines/test_memory.py tests the refusal)
    os.environ["PIVOT_MEMORY_CHECK"] = "off"
    try:
        merged = load_config(config)
        validate_training_config(merged)
        return initialize_training_workflow(merged, folder)
    finally:
        os.chdir(cwd)
        if check is None:
            os.environ.pop("PIVOT_MEMORY_CHECK", None)
        else:
            os.environ["PIVOT_MEMORY_CHECK"] = check


@pytest.fixture(scope="module")
def minimal(guide_folder):
    return _initialise(block("minimal_configuration"), guide_folder)


@pytest.fixture(scope="module")
def complete(guide_folder):
    return _initialise(block("complete_configuration_example"), guide_folder)


def test_the_minimal_configuration_builds_its_run(minimal):
    parsed = minimal.parser.get_parsed_content
    trainer = parsed("train#trainer")
    assert trainer.state.max_epochs == 100 and parsed("train#dataloader").batch_size == 2
    assert parsed("lr_scheduler").base_lrs == [0.001]  # the learning rate (the warm-up starts at a tenth of it)
    assert parsed("network_def").features[0] == 32  # base_filters
    assert [item["seriesuid"] for item in parsed("train#datalist")]  # data/processed/train of the folder
    assert parsed("data#annotations") == "data/annotations.csv"


def test_the_complete_configuration_builds_what_it_describes(complete):
    parsed = complete.parser.get_parsed_content
    trainer = parsed("train#trainer")
    assert trainer.state.max_epochs == 100 and parsed("train#dataloader").batch_size == 2
    loader = parsed("train#dataloader")
    assert loader.num_workers == 8 and loader.prefetch_factor == 2 and loader.persistent_workers
    assert parsed("train#trainer#iteration_update").steps == 4  # GradientAccumulation of 4 micro-batches
    optimizer = parsed("optimizer")
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert (group["weight_decay"], group["betas"]) == (1e-4, (0.9, 0.999))
    scheduler = parsed("lr_scheduler")
    assert (scheduler.t_total, scheduler.warmup_steps, scheduler.end_lr) == (100, 5, 1e-5)
    net = parsed("network_def")
    assert net.features[0] == 32 and len(net.features) == 5
    assert {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    loss = parsed("loss")
    assert loss.weights == {"detection": 1.0, "regression": 0.5, "classification": 0.3}
    assert float(loss.classification_loss.loss.pos_weight) == 3.0
    assert parsed("train#crop_ratios") == (1.0, 3.0, 0.5)  # hard negative mining: 3 negatives a positive, half hard
    assert parsed("validate#window_inferer").settings["overlap"] == 0.5  # data.stride 64 of patch 128
    assert loader.pin_memory and parsed("device#torch_device").type == "cpu"  # cuda unavailable here: CPU, logged
    assert parsed("device#amp") is False  # mixed_precision: true is CUDA's; on CPU it stays off (logged)


def test_the_complete_configurations_validation_and_logging(complete):
    from monai.handlers import ValidationHandler

    from pivot_monai.handlers import TrainingTelemetryHandler

    parsed = complete.parser.get_parsed_content
    handlers = parsed("train#handlers")
    (validation,) = [h for h in handlers if isinstance(h, ValidationHandler)]
    assert validation.interval == 1  # validation.interval: every epoch
    key, additional = parsed("validate#metrics")  # the evaluator's key metric and the others
    assert list(key) == ["val_froc"] and set(additional) == {
        "val_detection_dice",
        "val_center_accuracy",
        "val_size_accuracy",
    }
    (telemetry,) = [h for h in handlers if isinstance(h, TrainingTelemetryHandler)]
    assert telemetry.interval == 10  # logging.log_interval: every 10 iterations


def test_the_complete_configurations_checkpoints_and_logs(complete, guide_folder):
    from pivot_monai.handlers.resume import AtomicCheckpointSaver, TrainingCheckpointer

    parsed = complete.parser.get_parsed_content
    checkpointer = parsed("train#checkpointer")
    assert isinstance(checkpointer, TrainingCheckpointer)
    assert str(checkpointer.save_dir) == "checkpoints" and (checkpointer.save_interval, checkpointer.keep_last_n) == (
        5,
        3,
    )
    savers = [h for h in parsed("validate#handlers") if isinstance(h, AtomicCheckpointSaver)]
    assert len(savers) == 1 and savers[0].save_dir == "checkpoints"  # save_best: true keeps the best-model saver
    (best,) = [h for h in complete.parser.get("validate#handlers") if h.get("save_key_metric")]
    assert best["key_metric_filename"] == "model_best.pt"  # the guide's best_model.pth
    assert list(parsed("validate#evaluator").state.key_metric_name.split()) == ["val_froc"]  # froc_score
    assert (guide_folder / "logs").is_dir() and parsed("logging#log_interval") == 10
    assert parsed("validate#wandb") is None  # wandb.enabled: false
    clip = [h for h in parsed("train#handlers") if type(h).__name__ == "GradientClipHandler"]
    assert clip and clip[0].max_norm == 1.0 and not math.isinf(clip[0].max_norm)


def test_the_annotations_csv_is_checked_against_the_processed_scans(guide_folder, tmp_path):
    from pivot_monai.engines.validate import ConfigValueError

    rows = (guide_folder / "data" / "annotations.csv").read_text().splitlines()
    other = tmp_path / "other_annotations.csv"
    other.write_text("\n".join(rows[:-1]) + "\n")  # one nodule fewer than the scans were made with
    config = block("minimal_configuration")
    config["data"]["annotations"] = str(other)
    with pytest.raises(ConfigValueError, match=r"data.annotations: .*other_annotations.csv lists 0 nodule\(s\) for"):
        _initialise(config, guide_folder)
