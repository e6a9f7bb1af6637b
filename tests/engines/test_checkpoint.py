"""Atomic writes and run-folder checkpoints: a kill during a large save, a full disk, ordering, corrupt fallback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pivot_monai.engines.checkpoint import (
    CheckpointError,
    atomic_open,
    atomic_save,
    atomic_write_text,
    list_checkpoints,
    load_checkpoint,
    newest_valid_checkpoint,
    remove_stale_temporaries,
    rotate_checkpoints,
)
from tests.conftest import REPO_ROOT


def _ckpt(path: Path, epoch: int) -> Path:
    return atomic_save({"model": {"w": torch.full((2,), float(epoch))}, "trainer": {"iteration": epoch}}, path)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "report.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = atomic_write_text(tmp_path / "candidates.csv", "old\n")
    with pytest.raises(RuntimeError, match="boom"), atomic_open(target) as f:
        f.write("new, half")
        raise RuntimeError("boom")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["candidates.csv"]


def test_checkpoints_sort_by_progress_with_mid_epoch_ones_inside_their_epoch(tmp_path):
    for name in ("checkpoint_epoch=10.pt", "checkpoint_epoch=2.pt", "checkpoint_epoch=3_iteration=9.pt", "model.pt"):
        (tmp_path / name).write_bytes(b"x")
    assert [c.path.name for c in list_checkpoints(tmp_path)] == [
        "checkpoint_epoch=2.pt",
        "checkpoint_epoch=3_iteration=9.pt",
        "checkpoint_epoch=10.pt",
    ]


@pytest.mark.parametrize(
    "content, expected", [(b"", "empty"), (b"PK\x03\x04trunc", "unreadable"), (None, "not a training")]
)
def test_unusable_checkpoints_are_clear_errors_without_unsafe_advice(tmp_path, content, expected):
    path = tmp_path / "checkpoint_epoch=1.pt"
    if content is None:
        torch.save({"w": torch.zeros(1)}, path)  # a weights-only model.pt
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value) and "weights_only=False" not in str(exc.value)


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    _ckpt(tmp_path / "checkpoint_epoch=1.pt", 1)
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(b"\0" * 100)
    with caplog.at_level("WARNING"):
        entry, state = newest_valid_checkpoint(tmp_path)
    assert entry.path.name == "checkpoint_epoch=1.pt" and state["trainer"]["iteration"] == 1
    assert (tmp_path / "checkpoint_epoch=2.pt.corrupt").exists()  # kept for inspection, never picked again
    assert "falling back to checkpoint_epoch=1.pt" in caplog.text
    assert newest_valid_checkpoint(tmp_path)[0].path.name == "checkpoint_epoch=1.pt"


def test_rotation_keeps_the_newest_n_and_the_protected_file(tmp_path):
    for e in (1, 2, 3, 4):
        _ckpt(tmp_path / f"checkpoint_epoch={e}.pt", e)
    (tmp_path / "model_best.pt").write_bytes(b"best")
    removed = rotate_checkpoints(tmp_path, 2, protect=tmp_path / "checkpoint_epoch=1.pt")
    assert sorted(p.name for p in removed) == ["checkpoint_epoch=2.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_epoch=1.pt",
        "checkpoint_epoch=3.pt",
        "checkpoint_epoch=4.pt",
        "model_best.pt",
    ]
    assert rotate_checkpoints(tmp_path, 0) == []


_SLOW_SAVE = """
import sys, torch
from pivot_monai.engines.checkpoint import atomic_save
atomic_save({"model": {"w": torch.ones(60_000_000)}, "trainer": {"iteration": 2}}, sys.argv[1])
"""


def test_a_kill_during_a_large_save_leaves_the_previous_checkpoint_usable(tmp_path):
    _ckpt(tmp_path / "checkpoint_epoch=1.pt", 1)
    target = tmp_path / "checkpoint_epoch=2.pt"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(target)], cwd=REPO_ROOT)
    deadline = time.monotonic() + 60
    tmp = None
    while time.monotonic() < deadline and proc.poll() is None:
        tmps = list(tmp_path.glob(".checkpoint_epoch=2.pt.*.tmp"))
        if tmps and tmps[0].stat().st_size > 1_000_000:
            tmp = tmps[0]
            break
        time.sleep(0.005)
    if tmp is None:
        proc.kill()
        pytest.skip("the save finished before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists()  # never a partial file under the final name
    entry, state = newest_valid_checkpoint(tmp_path)
    assert entry.path.name == "checkpoint_epoch=1.pt" and state["trainer"]["iteration"] == 1
    assert remove_stale_temporaries(tmp_path) == [tmp] and not tmp.exists()
