"""The MONAI bundle contract: metadata, network I/O, workflow properties and the real training command."""

from __future__ import annotations

import subprocess
import sys

import pytest
from monai.bundle import ConfigWorkflow

from pivot_monai.transforms.targets import NoduleTargetsd
from tests.conftest import REPO_ROOT, SHARED_DIR, TINY_OVERRIDES, bundle_overrides, bundle_workflow

CONFIGS = REPO_ROOT / "bundle" / "configs"
SCHEMA = SHARED_DIR / "monai" / "meta_schema_20240725.json"


def _bundle(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )


@pytest.mark.skipif(not SCHEMA.exists(), reason="../shared/monai schema not available")
def test_verify_metadata_offline():
    res = _bundle("verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"), "--filepath", str(SCHEMA))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "metadata is verified with no error" in res.stdout + res.stderr


def test_verify_net_in_out():
    res = _bundle(
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        repr([str(CONFIGS / "train.yaml"), str(CONFIGS / "inference.yaml")]),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "verified with no error" in res.stdout + res.stderr


def test_training_workflow_has_required_properties(tiny_processed):
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "train.yaml"),
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="train",
        run_id="training",
        dataset_dir=str(tiny_processed),
    )
    wf.initialize()
    assert wf.check_properties() == []


def test_training_command_trains_and_writes_checkpoint_tensorboard_and_metrics(tiny_processed, tmp_path):
    bundle_root = tmp_path / "bundle"
    overrides = list(TINY_OVERRIDES)
    # 2 iterations an epoch (2 scans of 2 crops a batch): the per-iteration scalars are written at iterations 2 and 4
    overrides[overrides.index("--logging#log_interval") + 1] = "2"
    res = _bundle(
        "run",
        "training",
        "--config_file",
        str(CONFIGS / "train.yaml"),
        "--bundle_root",
        str(bundle_root),
        "--dataset_dir",
        str(tiny_processed),
        "--training#epochs",
        "2",
        *overrides,
    )
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    assert (bundle_root / "models" / "model.pt").exists()
    assert (bundle_root / "models" / "model_best.pt").exists()
    assert "val_froc" in log and "Epoch[2] Metrics" in log

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((bundle_root / "logs").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(bundle_root / "logs"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    per_iteration = {"train/loss", "train/loss_detection", "train/loss_regression", "train/loss_classification"}
    per_iteration |= {"train/lr", "train/grad_norm", "train/peak_rss_mb"}
    val_loss = {"val/loss", "val/loss_detection", "val/loss_regression", "val/loss_classification"}
    val_metrics = {"val/froc", "val/detection_dice", "val/center_accuracy", "val/size_accuracy"}
    assert per_iteration | val_loss | val_metrics | {"train/epoch_lr"} <= tags, tags
    assert all(tag.startswith(("train/", "val/")) for tag in tags), tags  # no train_loss, val_froc, memory/...
    for tag in per_iteration:  # logging#log_interval throttles every per-iteration scalar
        assert [e.step for e in acc.Scalars(tag)] == [2, 4], tag
    for tag in val_loss | val_metrics:  # once per validation round, at the trainer's epoch
        assert [e.step for e in acc.Scalars(tag)] == [1, 2], tag
    assert all(e.value > 0 for e in acc.Scalars("val/loss_detection"))
    assert "val_loss_detection" in log  # the evaluator's StatsHandler prints the loss with the metrics
    # the console: one summary line per epoch at INFO; MONAI's per-iteration loss lines are DEBUG
    assert log.count("train_loss: ") == 0 and log.count(" patches/s") == 2

    import torch

    state = torch.load(bundle_root / "models" / "model.pt", map_location="cpu")
    assert any(k.startswith("heatmap_head") for k in state["model"])
    # the bundle command's model.pt describes itself: network, preprocessing and inference as trained
    recorded = state["pivot"]["config"]
    assert recorded["model"]["base_filters"] == 4 and recorded["model"]["depth"] == 2  # TINY_OVERRIDES
    assert recorded["data"]["patch_size"] == [16, 16, 16] and "target_spacing" in recorded["data"]


def test_heatmap_keys_reach_the_training_targets(tiny_processed, tmp_path):
    overrides = bundle_overrides(TINY_OVERRIDES, **{"data#heatmap": {"sigma_scale": 0.3, "min_sigma_voxels": 1.5}})
    wf = bundle_workflow([CONFIGS / "train.yaml"], tiny_processed, tmp_path / "bundle", overrides)
    chain = wf.parser.get_parsed_content("train#preprocessing").transforms
    targets = [t for t in chain if isinstance(t, NoduleTargetsd)]
    assert [(t.sigma_scale, t.min_sigma_vox) for t in targets] == [(0.3, 1.5)]


def test_positive_sampling_keys_reach_the_crop_sampler(tiny_processed, tmp_path):
    from pivot_monai.transforms.sampling import NoduleCropSamplerd

    overrides = bundle_overrides(
        TINY_OVERRIDES,
        **{"data#positive_sampling": "contrast", "data#positive_contrast_hu": 650, "data#hu_window": [-1100, 300]},
    )
    wf = bundle_workflow([CONFIGS / "train.yaml"], tiny_processed, tmp_path / "bundle", overrides)
    chain = wf.parser.get_parsed_content("train#preprocessing").transforms
    samplers = [t for t in chain if isinstance(t, NoduleCropSamplerd)]
    assert [(s.positive_sampling, s.contrast_reference_hu, s.hu_window) for s in samplers] == [
        ("contrast", 650.0, (-1100.0, 300.0))
    ]


def test_track_meta_key_decides_what_the_cache_holds_and_the_crops_stay_the_same(tiny_processed, tmp_path):
    import torch
    from monai.data import MetaTensor, get_track_meta
    from monai.utils import set_determinism

    crops = {}
    for track_meta in (False, True):
        overrides = bundle_overrides(TINY_OVERRIDES, **{"data#track_meta": track_meta})
        wf = bundle_workflow([CONFIGS / "train.yaml"], tiny_processed, tmp_path / str(track_meta), overrides)
        assert get_track_meta() is track_meta  # set by `initialize`, before the cache was built
        dataset = wf.parser.get_parsed_content("train#dataset")
        cached = dataset._cache[0]["image"]
        assert isinstance(cached, MetaTensor) is track_meta and cached.shape[0] == 1  # channel first either way
        set_determinism(seed=5)
        dataset.transform.set_random_state(seed=5)
        crops[track_meta] = [dataset[i] for i in range(len(dataset))]
        wf.finalize()
        assert get_track_meta() is True  # MONAI's default back after the run
    for off, on in zip(crops[False], crops[True]):
        for a, b in zip(off, on):
            assert type(a["image"]) is torch.Tensor and type(b["image"]) is torch.Tensor
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
