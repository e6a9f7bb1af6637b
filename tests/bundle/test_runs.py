"""``pivot train`` run folders: runs never overwrite each other, a rerun continues the newest run, files describe
the model."""

from __future__ import annotations

import json

import pytest
import torch

from pivot_monai.engines.checkpoint import CheckpointError
from pivot_monai.engines.runs import list_runs, new_run, select_run
from pivot_monai.networks.metadata import read_metadata
from pivot_monai.train import train
from tests.conftest import TINY_OVERRIDES, bundle_overrides

TINY = {
    **bundle_overrides(TINY_OVERRIDES),
    "data#target_spacing": [2.0, 2.0, 2.0],
    "training#epochs": 1,
    "checkpointing#save_interval": 1,
}


def _train(tiny_processed, tmp_path, **kwargs):
    config = {**TINY, **kwargs.pop("config", {})}
    return train(
        config,
        experiment_name="tiny",
        dataset_dir=str(tiny_processed),
        bundle_root=str(tmp_path / "bundle"),
        runs_dir=tmp_path / "runs",
        **kwargs,
    )


def test_a_run_writes_its_own_folder_and_describes_its_model(tiny_processed, tmp_path):
    _train(tiny_processed, tmp_path, export_to=tmp_path / "published" / "model.pt")
    (run,) = list_runs(tmp_path / "runs", "tiny")
    names = {p.name for p in run.iterdir()}
    assert {"checkpoint_epoch=1.pt", "model.pt", "model_best.pt", "config_resolved.yaml", "train.log"} <= names
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not (tmp_path / "bundle" / "models").exists()  # nothing written into the bundle
    record = json.loads((run / "run.json").read_text())
    assert "a new run" in (run / "train.log").read_text()
    for name in ("model.pt", "model_best.pt", "checkpoint_epoch=1.pt"):
        meta = read_metadata(run / name)
        assert meta["run_id"] == record["run_id"] and meta["experiment"] == "tiny", name
        assert meta["config"]["model"]["base_filters"] == 4 and meta["config"]["model"]["depth"] == 2
        assert meta["config"]["data"]["target_spacing"] == [2.0, 2.0, 2.0]
        assert set(meta["versions"]) == {"pivot", "monai", "torch"}
    published = torch.load(tmp_path / "published" / "model.pt", weights_only=True)
    assert set(published) == {"model", "pivot"} and published["pivot"]["run_id"] == record["run_id"]


def test_a_rerun_continues_the_newest_run_in_its_folder(tiny_processed, tmp_path):
    _train(tiny_processed, tmp_path)
    (first,) = list_runs(tmp_path / "runs", "tiny")
    _train(tiny_processed, tmp_path, config={"training#epochs": 2})  # auto: continues epoch 2 in the same folder
    assert list_runs(tmp_path / "runs", "tiny") == [first]
    assert (first / "checkpoint_epoch=2.pt").exists()
    launches = json.loads((first / "run.json").read_text())["launches"]
    assert len(launches) == 2 and "continuing the newest run" in launches[1]["how"]
    assert read_metadata(first / "checkpoint_epoch=2.pt")["run_id"] == read_metadata(first / "model.pt")["run_id"]


def test_select_run_rules(tmp_path):
    root = tmp_path / "runs"
    with pytest.raises(CheckpointError, match="has no run"):
        select_run(root, "x", "true")
    empty = new_run(root, "x")
    fresh, why = select_run(root, "x", "auto")  # the newest run holds no checkpoint: a new folder
    assert fresh != empty and "a new run" in why
    (fresh / "checkpoint_epoch=1.pt").write_bytes(b"")
    assert select_run(root, "x", "auto")[0] == fresh
    assert select_run(root, "x", fresh / "checkpoint_epoch=1.pt")[0] == fresh
    assert select_run(root, "x", "false")[0] not in (empty, fresh)
    with pytest.raises(ValueError, match="folder name"):
        select_run(root, "../elsewhere", "auto")
