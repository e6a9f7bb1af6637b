"""The training bundle with hard-negative mining, curriculum, progressive stages and encoder freezing switched on.

Runs ``train.yaml`` layered with ``bundle/configs/features_example.yaml`` on the tiny processed dataset, with small
stages so that every switch happens within three epochs.
"""

from __future__ import annotations

import torch
from ignite.engine import Events

from tests.conftest import REPO_ROOT, TINY_OVERRIDES, bundle_overrides, bundle_workflow

CONFIGS = REPO_ROOT / "bundle" / "configs"
FEATURES_EXAMPLE = CONFIGS / "features_example.yaml"

STAGES = {
    "training#curriculum#stages": [{"epochs": 1, "min_diameter": 12.0}, {"epochs": 2, "min_diameter": 0.0}],
    "training#progressive#stages": [
        {"epochs": 1, "patch_size": [8, 8, 8], "batch_size": 4},
        {"epochs": 2, "patch_size": [16, 16, 16], "batch_size": 2},
    ],
    "training#pretrained#freeze_epochs": 1,
    "training#hard_negative_mining#interval": 1,
    "training#hard_negative_mining#score_threshold": 0.0,  # an untrained net peaks at ~0.01: mine every peak
    "training#hard_negative_mining#pool_size": 5,
    "training#hard_negative_mining#subset_fraction": 1.0,
    "checkpointing#save_interval": 1,
    "checkpointing#keep_last_n": 1,
}
FAST = {"validation#interval": 10, "inference#overlap": 0.0, "inference#sw_batch_size": 16}  # no validation


def _workflow(tiny_processed, tmp_path, features: bool = True, **extra):
    files = [CONFIGS / "train.yaml"] + ([FEATURES_EXAMPLE] if features else [])
    overrides = bundle_overrides(TINY_OVERRIDES, **{**(STAGES if features else {}), **FAST, **extra})
    return bundle_workflow(files, tiny_processed, tmp_path / "bundle", overrides)


def _record(wf) -> dict[int, dict]:
    """Per epoch: first batch shape, stage, whether encoder grads exist, and which parameter groups changed."""
    trainer = wf.parser.get_parsed_content("train#trainer")
    net = wf.parser.get_parsed_content("network")
    state = wf.parser.get_parsed_content("train#stage_state")
    seen: dict[int, dict] = {}

    def snapshot():
        return {
            "encoder": [p.detach().clone() for p in net.encoder_parameters()],
            "decoder": [p.detach().clone() for p in net.decoder_parameters()],
            "heads": [p.detach().clone() for p in net.head_parameters()],
        }

    @trainer.on(Events.EPOCH_STARTED)
    def _start(engine):
        seen[engine.state.epoch] = {
            "before": snapshot(),
            "min_diameter": state.min_diameter,
            "batch_size": engine.state.dataloader.batch_size,
        }

    @trainer.on(Events.ITERATION_STARTED)  # the collated batch (MONAI decollates it during the iteration)
    def _batch(engine):
        seen[engine.state.epoch].setdefault("shape", tuple(engine.state.batch["image"].shape))

    @trainer.on(Events.ITERATION_COMPLETED)
    def _iteration(engine):
        seen[engine.state.epoch]["encoder_grad"] = any(p.grad is not None for p in net.encoder_parameters())

    @trainer.on(Events.EPOCH_COMPLETED)
    def _end(engine):
        rec, after = seen[engine.state.epoch], snapshot()
        rec["changed"] = {k: any(not torch.equal(a, b) for a, b in zip(rec["before"][k], after[k])) for k in after}

    return seen


def test_all_features_train_together(tiny_processed, tmp_path):
    wf = _workflow(tiny_processed, tmp_path, **{"training#epochs": 3})
    seen = _record(wf)
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    pool = wf.parser.get_parsed_content("train#hard_negative_pool")
    wf.finalize()
    assert trainer.state.epoch == 3
    # progressive: 4 volumes x 2 crops of 8^3 per batch, then 2 x 2 crops of 16^3; epochs keep 2 iterations each
    assert [seen[e]["shape"] for e in (1, 2, 3)] == [(8, 1, 8, 8, 8), (4, 1, 16, 16, 16), (4, 1, 16, 16, 16)]
    assert [seen[e]["batch_size"] for e in (1, 2, 3)] == [4, 2, 2] and trainer.state.iteration == 6
    assert [seen[e]["min_diameter"] for e in (1, 2, 3)] == [12.0, 0.0, 0.0]
    # frozen encoder in epoch 1 (no gradients, unchanged), trained afterwards; decoder and heads train throughout
    assert [seen[e]["encoder_grad"] for e in (1, 2, 3)] == [False, True, True]
    assert [seen[e]["changed"]["encoder"] for e in (1, 2, 3)] == [False, True, True]
    assert all(seen[e]["changed"]["decoder"] and seen[e]["changed"]["heads"] for e in (1, 2, 3))
    # mining filled the pool, and the resumable checkpoint holds it
    assert len(pool) > 0 and all(len(pool.get(uid)) <= 5 for uid in pool.seriesuids())
    saved = torch.load(tmp_path / "bundle" / "models" / "checkpoint_epoch=3.pt", weights_only=True)
    assert set(saved["hard_negative_pool"]["entries"]) == set(pool.seriesuids())


def test_resumed_run_continues_in_its_stage_with_its_pool(tiny_processed, tmp_path):
    wf = _workflow(tiny_processed, tmp_path, **{"training#epochs": 2})
    wf.run()
    pool = wf.parser.get_parsed_content("train#hard_negative_pool").state_dict()
    wf.finalize()
    checkpoint = tmp_path / "bundle" / "models" / "checkpoint_epoch=2.pt"
    wf2 = _workflow(
        tiny_processed,
        tmp_path,
        **{"training#epochs": 3, "checkpointing#resume": str(checkpoint), "training#hard_negative_mining#interval": 5},
    )
    seen = _record(wf2)
    pool2 = wf2.parser.get_parsed_content("train#hard_negative_pool")
    wf2.run()
    wf2.finalize()
    assert list(seen) == [3] and seen[3]["shape"] == (4, 1, 16, 16, 16) and seen[3]["encoder_grad"]
    assert {k: v.tolist() for k, v in pool2.state_dict()["entries"].items()} == {
        k: v.tolist() for k, v in pool["entries"].items()
    }  # restored, and no mining round at epoch 3


def test_defaults_train_without_the_features(tiny_processed, tmp_path):
    wf = _workflow(tiny_processed, tmp_path, features=False, **{"training#epochs": 1})
    seen = _record(wf)
    wf.run()
    wf.finalize()
    assert seen[1]["shape"] == (4, 1, 16, 16, 16) and seen[1]["encoder_grad"]
    assert not (tmp_path / "bundle" / "models" / "hard_negative_pool.json").exists()


def _forwards_per_validation(wf) -> tuple[int, dict]:
    """Network calls of one run of the validation evaluator, and its metrics."""
    net = wf.parser.get_parsed_content("network")
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    calls = []
    handle = net.register_forward_hook(lambda *_: calls.append(1))
    try:
        evaluator.run()
    finally:
        handle.remove()
    return len(calls), dict(evaluator.state.metrics)


def test_validation_applies_inference_tta_and_mining_never_does(tiny_processed, tmp_path):
    tta = {"enabled": True, "augmentation_types": ["flip_x", "flip_y", "flip_z"], "num_augmentations": 8}
    plain_calls, plain_metrics = _forwards_per_validation(_workflow(tiny_processed, tmp_path / "a"))
    wf = _workflow(tiny_processed, tmp_path / "b", **{"inference#tta": tta})
    tta_calls, tta_metrics = _forwards_per_validation(wf)
    assert plain_calls > 0 and tta_calls == 8 * plain_calls
    assert "val_froc" in tta_metrics and set(tta_metrics) == set(plain_metrics)
    mining = next(
        h for h in wf.parser.get_parsed_content("train#handlers") if type(h).__name__ == "HardNegativeMiningHandler"
    )
    assert "TTAInferer" not in repr(vars(mining.inferer))
