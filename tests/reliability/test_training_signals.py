"""Real training subprocesses stopped by SIGTERM, SIGKILL and a second signal, then resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, TINY_OVERRIDES

TRAIN_YAML = REPO_ROOT / "bundle" / "configs" / "train.yaml"


class _Run:
    """``python -m monai.bundle run training`` in a subprocess, its merged output collected line by line."""

    def __init__(self, dataset: Path, bundle_root: Path, *extra: str, new_session: bool = False) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        env["PIVOT_LOG_LEVEL"] = "DEBUG"  # the per-iteration lines these tests wait for are DEBUG
        args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(TRAIN_YAML)]
        args += ["--bundle_root", str(bundle_root), "--dataset_dir", str(dataset), *TINY_OVERRIDES, *extra]
        self.proc = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=new_session,  # its own process group, as under `timeout`
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        self.proc.kill()
        raise AssertionError(f"{text!r} never appeared:\n{self.log[-3000:]}")

    def finish(self, timeout: float = 300) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


EPOCH_OF_4 = ["--training#batch_size", "1"]  # 4 training scans: 4 iterations per epoch


_SIGTERM_RUN = [
    *EPOCH_OF_4,
    "--training#epochs",
    "2",
    "--checkpointing#save_interval",
    "0",
    "--validation#interval",
    "5",
]


def _stop_with_sigterm(dataset: Path, bundle_root: Path) -> tuple[_Run, Path]:
    run = _Run(dataset, bundle_root, *_SIGTERM_RUN)
    run.wait_for("Epoch: 1/2, Iter: 1/4")
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 143, run.log[-3000:]
    stopped = run.matching("stopped by SIGTERM")
    assert len(stopped) == 1 and "run the same command again to resume" in stopped[0], run.log[-3000:]
    assert "Traceback" not in run.log
    saved = list((bundle_root / "models").glob("checkpoint_epoch=1_iteration=*.pt"))
    assert len(saved) == 1 and str(saved[0]) in stopped[0]
    return run, saved[0]


def test_sigterm_mid_epoch_writes_a_checkpoint_logs_one_line_and_exits_143(tiny_processed, tmp_path):
    _, saved = _stop_with_sigterm(tiny_processed, tmp_path / "b")
    meta = torch.load(saved, weights_only=True)["pivot"]
    assert meta["epoch"] == 1 and 1 <= meta["iteration"] <= 3


@pytest.mark.slow
def test_the_same_command_resumes_after_a_sigterm(tiny_processed, tmp_path):
    _, saved = _stop_with_sigterm(tiny_processed, tmp_path / "b")
    again = _Run(tiny_processed, tmp_path / "b", *_SIGTERM_RUN)
    assert again.finish() == 0, again.log[-3000:]
    assert len(again.matching(f"resuming from {saved}")) == 1
    assert not again.matching("Epoch: 1/2, Iter: 1/4") and again.matching("Epoch: 2/2, Iter: 4/4")
    assert (tmp_path / "b" / "models" / "model.pt").exists()


@pytest.mark.slow
def test_a_second_signal_stops_at_once_without_another_checkpoint(tiny_processed, tmp_path):
    run = _Run(
        tiny_processed, tmp_path / "b", *EPOCH_OF_4, "--training#epochs", "50", "--checkpointing#save_interval", "0"
    )
    run.wait_for("Epoch: 1/50, Iter: 1/4")
    run.proc.send_signal(signal.SIGINT)
    run.wait_for("SIGINT received")
    run.proc.send_signal(signal.SIGINT)
    rc = run.finish()
    assert rc in (-signal.SIGINT, 130), run.log[-3000:]  # 130 when the first one's checkpoint won the race
    if rc == -signal.SIGINT:
        assert run.matching("second SIGINT: stopping at once")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run_bit_for_bit(tiny_processed, tmp_path):
    extra = ["--training#epochs", "4", "--checkpointing#save_interval", "1", "--checkpointing#keep_last_n", "2"]
    reference = _Run(tiny_processed, tmp_path / "ref", *extra)
    assert reference.finish() == 0, reference.log[-3000:]

    killed = _Run(tiny_processed, tmp_path / "run", *extra)
    killed.wait_for("Epoch: 3/4, Iter: 1/2")
    killed.proc.send_signal(signal.SIGKILL)
    assert killed.finish() == -signal.SIGKILL

    resumed = _Run(tiny_processed, tmp_path / "run", *extra)
    assert resumed.finish() == 0, resumed.log[-3000:]
    assert resumed.matching("resuming from") and "after epoch 2, at iteration 4" in resumed.matching("resuming")[0]
    assert [e for e in ("Epoch: 1/4", "Epoch: 2/4") if resumed.matching(e)] == []  # nothing trained twice

    a = torch.load(tmp_path / "ref" / "models" / "model.pt", weights_only=True)["model"]  # self-describing files
    b = torch.load(tmp_path / "run" / "models" / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (
        reference.matching("Epoch[4] Metrics")[-1].split("Metrics -- ")[-1]
        == resumed.matching("Epoch[4] Metrics")[-1].split("Metrics -- ")[-1]
    )
    # one run's checkpoints, keep_last_n over both processes
    names = sorted(p.name for p in (tmp_path / "run" / "models").glob("checkpoint_epoch=*"))
    assert names == ["checkpoint_epoch=3.pt", "checkpoint_epoch=4.pt"]
    ids = {torch.load(tmp_path / "run" / "models" / n, weights_only=True)["pivot"]["run_id"] for n in names}
    assert len(ids) == 1


def test_sigterm_to_the_process_group_with_loader_workers_still_stops_gracefully(tiny_processed, tmp_path):
    """``timeout`` and Slurm signal the whole group: the loader workers must not die before the checkpoint."""
    run = _Run(tiny_processed, tmp_path / "b", *_SIGTERM_RUN, "--data#num_workers", "1", new_session=True)
    run.wait_for("Epoch: 1/2, Iter: 1/4")
    os.killpg(run.proc.pid, signal.SIGTERM)  # what `timeout 60 python -m monai.bundle run ...` does
    assert run.finish() == 143, run.log[-3000:]
    assert len(run.matching("stopped by SIGTERM")) == 1 and "Traceback" not in run.log, run.log[-3000:]
    assert len(list((tmp_path / "b" / "models").glob("checkpoint_epoch=1_iteration=*.pt"))) == 1


# validation after the last epoch only, slowed by test-time augmentation so the kill lands inside it
_FINAL_VALIDATION_RUN = [
    *EPOCH_OF_4,
    "--training#epochs",
    "2",
    "--validation#interval",
    "2",
    "--inference#tta#enabled",
    "True",
    "--inference#tta#num_augmentations",
    "8",
]


@pytest.mark.parametrize("save_interval", ["0", "2"])
def test_a_run_killed_in_its_final_validation_keeps_its_model_and_resumes_with_only_that_validation(
    tiny_processed, tmp_path, save_interval
):
    extra = [*_FINAL_VALIDATION_RUN, "--checkpointing#save_interval", save_interval]
    models = tmp_path / "b" / "models"
    killed = _Run(tiny_processed, tmp_path / "b", *extra)
    killed.wait_for("before the final validation: saved")
    killed.proc.send_signal(signal.SIGKILL)  # what the kernel's OOM killer does
    assert killed.finish() == -signal.SIGKILL
    assert not killed.matching("Epoch[2] Metrics"), "the validation finished before the kill"
    weights = torch.load(models / "model.pt", weights_only=True)  # the trained weights are on disk
    assert set(weights) == {"model", "pivot"} and weights["pivot"]["config"]["model"]  # self-describing
    pending = torch.load(models / "checkpoint_epoch=2.pt", weights_only=False)["pivot"]
    assert pending["final_validation"] == "pending" and pending["completed_epochs"] == 2

    resumed = _Run(tiny_processed, tmp_path / "b", *extra)
    assert resumed.finish() == 0, resumed.log[-3000:]
    assert resumed.matching("finished its 2 epochs but not its final validation: running it")
    assert not resumed.matching("Epoch: 1/2, Iter") and not resumed.matching("Epoch: 2/2, Iter")  # nothing retrained
    assert len(resumed.matching("Epoch[2] Metrics")) == 1 and (models / "model_best.pt").exists()
    resumed_weights = torch.load(models / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed_weights[k], weights["model"][k]) for k in weights["model"])
    if save_interval == "0":  # no periodic checkpoints: none is left, as after an uninterrupted run
        assert not list(models.glob("checkpoint_epoch=*.pt"))
    else:  # the last epoch's periodic checkpoint, now with the validation's outcome
        done = torch.load(models / "checkpoint_epoch=2.pt", weights_only=False)
        assert done["pivot"]["final_validation"] == "done" and done["evaluator"]["best_metric_epoch"] == 2


@pytest.mark.parametrize("save_interval", ["0", "1"])
def test_an_uninterrupted_run_leaves_the_checkpoints_its_save_interval_asks_for(
    tiny_processed, tmp_path, save_interval
):
    run = _Run(
        tiny_processed, tmp_path / "b", *_FINAL_VALIDATION_RUN[:6], "--checkpointing#save_interval", save_interval
    )
    assert run.finish() == 0, run.log[-3000:]
    models = tmp_path / "b" / "models"
    assert run.matching("before the final validation: saved") and (models / "model.pt").exists()
    names = sorted(p.name for p in models.glob("checkpoint_epoch=*.pt"))
    assert names == ([] if save_interval == "0" else ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"])
    if names:  # the last one was saved again after the validation: a new run in this folder has nothing to redo
        assert "final_validation" not in torch.load(models / names[-1], weights_only=False)["pivot"]
