"""benchmarks.bench_time_to_cpm: the parts that read a training run (log rates, start time, checkpoints)."""

from __future__ import annotations

import os

import pytest

from benchmarks.bench_time_to_cpm import (
    _checkpoints,
    main,
    patches_per_second,
    resolve_run_dir,
    run_epochs,
    run_start,
)

LOG = """\
22:51:26 INFO pivot_monai.handlers.progress: epoch 1/66: 53/70 it (76 %), 1.11s/it, loss=0.3779, elapsed 00:30
22:51:45 INFO progress: epoch 1/66: loss 0.3671 (detection 0.2849), lr 3.00e-04, 3.5 patches/s, 1.3 min, ETA 1.4 h
22:53:01 INFO progress: epoch 2/66: loss 0.3364 (detection 0.2601), lr 1.20e-03, 12.5 patches/s, 22 s, ETA 30 min
22:53:31 INFO progress: epoch 3/66: loss 0.3000 (detection 0.2500), lr 1.20e-03, 13.5 patches/s, 20 s, ETA 29 min
"""


def test_patches_per_second_is_the_median_of_the_epoch_summaries():
    assert patches_per_second(LOG) == 12.5
    assert patches_per_second("no summary lines here") is None


def test_run_epochs_is_the_total_of_the_progress_lines():
    assert run_epochs(LOG) == 66
    assert run_epochs(LOG.replace("/66", "/72")) == 72
    assert run_epochs("no progress lines") is None


def test_run_start_finds_the_event_files_beside_the_models_folder(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "events.out.tfevents.1796597425.vm.26751.0").write_bytes(b"")
    assert run_start(tmp_path / "models") == 1796597425.0
    (tmp_path / "models" / "events.out.tfevents.1796590000.vm.1.0").write_bytes(b"")
    assert run_start(tmp_path / "models") == 1796590000.0  # the run folder's own event files come first


def test_run_start_reads_the_first_event_file_stamp(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "events.out.tfevents.1796597425.vm.26751.0").write_bytes(b"")
    (tmp_path / "logs" / "events.out.tfevents.1796597999.vm.26751.1").write_bytes(b"")
    assert run_start(tmp_path) == 1796597425.0
    assert run_start(tmp_path / "elsewhere" / "missing") is None


def test_checkpoints_in_epoch_order_with_the_final_model(tmp_path):
    for name in ("checkpoint_epoch=22.pt", "checkpoint_epoch=11.pt", "checkpoint_epoch=3_iteration=200.pt", "model.pt"):
        (tmp_path / name).write_bytes(b"x")
    found = _checkpoints(tmp_path, epochs=30)
    assert [(e, p.name) for e, p in found] == [(11, "checkpoint_epoch=11.pt"), (22, "checkpoint_epoch=22.pt"),
                                              (30, "model.pt")]  # fmt: skip
    os.remove(tmp_path / "model.pt")
    assert [e for e, _ in _checkpoints(tmp_path, epochs=22)] == [11, 22]


def test_a_run_folder_without_checkpoints_is_a_clear_error(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(LOG)
    (tmp_path / "models").mkdir()
    argv = ["--run-dir", str(tmp_path / "models"), "--train-log", str(log), "--config", "bundle/configs/demo.yaml"]
    with pytest.raises(SystemExit, match=r"no checkpoint_epoch=N.pt or model.pt there.*RUN/models"):
        main([*argv, "--heldout-dir", str(tmp_path)])


def test_a_bundle_root_reads_the_checkpoints_of_its_models_folder(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "checkpoint_epoch=12.pt").write_bytes(b"x")
    (tmp_path / "models" / "model.pt").write_bytes(b"x")
    folder, found = resolve_run_dir(tmp_path, epochs=24)
    assert folder == tmp_path / "models" and [e for e, _ in found] == [12, 24]
    assert resolve_run_dir(tmp_path / "models", epochs=24)[0] == tmp_path / "models"
