"""Training features driven by config keys: resume, early stopping, wandb, accumulation, optimiser choices."""

from __future__ import annotations

import pytest
from ignite.engine import Events

from tests.conftest import REPO_ROOT, TINY_OVERRIDES, bundle_overrides, bundle_workflow

CONFIGS = REPO_ROOT / "bundle" / "configs"


def _workflow(tiny_processed, tmp_path, **extra):
    return bundle_workflow(
        [CONFIGS / "train.yaml"], tiny_processed, tmp_path / "bundle", bundle_overrides(TINY_OVERRIDES, **extra)
    )


def test_periodic_checkpoint_resumes_training(tiny_processed, tmp_path):
    wf = _workflow(
        tiny_processed,
        tmp_path,
        **{"training#epochs": 2, "checkpointing#save_interval": 1, "checkpointing#keep_last_n": 1},
    )
    wf.run()
    wf.finalize()
    saved = sorted((tmp_path / "bundle" / "models").glob("checkpoint_epoch=*.pt"))
    assert [p.name for p in saved] == ["checkpoint_epoch=2.pt"]  # keep_last_n=1 removed epoch 1
    wf2 = _workflow(tiny_processed, tmp_path, **{"training#epochs": 3, "checkpointing#resume": str(saved[0])})
    trainer = wf2.parser.get_parsed_content("train#trainer")
    epochs_run = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs_run.append(e.state.epoch))
    wf2.run()
    wf2.finalize()
    assert epochs_run == [3]


def test_early_stopping_stops_when_the_monitor_does_not_improve(tiny_processed, tmp_path):
    wf = _workflow(
        tiny_processed,
        tmp_path,
        **{"training#epochs": 6, "training#early_stopping#patience": 1, "training#early_stopping#min_delta": 10.0},
    )
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    wf.finalize()
    assert trainer.state.epoch == 2


def test_early_stopping_can_monitor_the_validation_loss(tiny_processed, tmp_path):
    stop = {"patience": 1, "min_delta": 10.0, "monitor": "val_loss", "mode": "min"}
    wf = _workflow(
        tiny_processed,
        tmp_path,
        **{"training#epochs": 4, **{f"training#early_stopping#{k}": v for k, v in stop.items()}},
    )
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    metrics = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    wf.finalize()
    assert trainer.state.epoch == 2 and metrics["val_loss"] > 0


def test_wandb_logs_offline_when_installed(tiny_processed, tmp_path):
    pytest.importorskip("wandb")
    wdir = tmp_path / "wandb_runs"
    wdir.mkdir()
    wf = _workflow(
        tiny_processed,
        tmp_path,
        **{"training#epochs": 1, "logging#wandb#enabled": True, "logging#wandb#init_kwargs": {"dir": str(wdir)}},
    )
    wf.run()
    wf.finalize()
    assert list(wdir.rglob("offline-run-*")), list(wdir.rglob("*"))


def test_wandb_missing_gives_install_hint(monkeypatch):
    import pivot_monai.handlers.wandb as wb

    monkeypatch.setattr(wb, "optional_import", lambda name: (None, False))
    with pytest.raises(ImportError, match="pip install wandb"):
        wb.make_wandb_handler({"enabled": True})
    assert wb.make_wandb_handler({"enabled": False}) is None


@pytest.mark.parametrize(
    "extra",
    [
        {"training#accumulation_steps": 2, "training#optimizer#type": "sgd", "training#scheduler#type": "step"},
        {
            "training#scheduler#type": "plateau",
            "training#loss#detection#type": "dice",
            "training#hard_negative_mining#enabled": True,
        },
    ],
)
def test_other_optimisation_settings_train(tiny_processed, tmp_path, extra):
    wf = _workflow(tiny_processed, tmp_path, **{"training#epochs": 1, **extra})
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    wf.finalize()
    assert trainer.state.epoch == 1 and trainer.state.output


def test_ema_weights_are_validated_saved_and_resumed(tiny_processed, tmp_path):
    import torch

    ema_on = {"training#ema": {"enabled": True, "decay": 0.9, "warmup_iterations": 0}}
    periodic = {"checkpointing#save_interval": 1, "checkpointing#keep_last_n": 1}
    wf = _workflow(tiny_processed, tmp_path, **{"training#epochs": 2, **periodic, **ema_on})
    ema = wf.parser.get_parsed_content("train#ema")
    assert wf.parser.get_parsed_content("validate#evaluator").network is ema.ema_model
    wf.run()
    online = {k: v.clone() for k, v in wf.parser.get_parsed_content("network").state_dict().items()}
    averaged = {k: v.clone() for k, v in ema.ema_model.state_dict().items()}
    wf.finalize()
    models = tmp_path / "bundle" / "models"
    final = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    final = final.get("model", final)
    assert all(torch.equal(final[k], averaged[k]) for k in averaged)
    assert any(not torch.equal(online[k], averaged[k]) for k in averaged if online[k].is_floating_point())
    checkpoint = models / "checkpoint_epoch=2.pt"
    assert "ema_model" in torch.load(checkpoint, map_location="cpu", weights_only=True)

    # a resumed run continues the saved average, not a restart from the online weights
    resume = {"training#epochs": 3, "checkpointing#resume": str(checkpoint)}
    wf2 = _workflow(tiny_processed, tmp_path, **resume, **ema_on)
    ema2 = wf2.parser.get_parsed_content("train#ema")
    trainer = wf2.parser.get_parsed_content("train#trainer")
    at_start = {}
    trainer.add_event_handler(
        Events.EPOCH_STARTED, lambda e: at_start.update({k: v.clone() for k, v in ema2.ema_model.state_dict().items()})
    )
    wf2.run()
    wf2.finalize()
    assert all(torch.equal(at_start[k], averaged[k]) for k in averaged)
