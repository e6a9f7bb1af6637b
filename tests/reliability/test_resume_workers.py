"""Resume bit for bit with two persistent DataLoader workers: the training loader of ItemSeededLoader (engines.rng)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT, TINY_OVERRIDES

TRAIN_YAML = REPO_ROOT / "bundle" / "configs" / "train.yaml"


def _train(dataset, bundle_root) -> None:
    overrides = list(TINY_OVERRIDES)
    overrides[overrides.index("--data#num_workers") + 1] = "2"
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(TRAIN_YAML)]
    args += ["--bundle_root", str(bundle_root), "--dataset_dir", str(dataset), *overrides]
    args += ["--training#epochs", "3", "--checkpointing#save_interval", "1", "--checkpointing#keep_last_n", "5"]
    args += ["--data#persistent_workers", "True", "--validation#interval", "5", "--logging#tensorboard", "False"]
    args += ["--train#dataloader#_target_", "pivot_monai.engines.rng.ItemSeededLoader"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    res = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return res.stdout + res.stderr


def _weights(path):
    state = torch.load(path, weights_only=True, map_location="cpu")
    return state["model"] if isinstance(state.get("model"), dict) else state


@pytest.mark.slow
def test_resuming_with_two_persistent_workers_matches_the_uninterrupted_run_bit_for_bit(tiny_processed, tmp_path):
    _train(tiny_processed, tmp_path / "ref")
    (tmp_path / "run" / "models").mkdir(parents=True)
    shutil.copy(tmp_path / "ref" / "models" / "checkpoint_epoch=2.pt", tmp_path / "run" / "models")
    log = _train(tiny_processed, tmp_path / "run")
    assert "after epoch 2" in log
    a, b = _weights(tmp_path / "ref" / "models" / "model.pt"), _weights(tmp_path / "run" / "models" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
