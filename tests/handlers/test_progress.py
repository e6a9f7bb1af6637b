"""TrainingProgress on a real MONAI SupervisedTrainer: one INFO summary line per epoch, in order, with the epoch's
mean loss and components, lr, patches/s and the ETA."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from monai.engines import SupervisedTrainer

from pivot_monai.handlers.progress import TrainingProgress, format_duration
from pivot_monai.handlers.telemetry import TrainingTelemetryHandler


class _LossWithComponents(torch.nn.MSELoss):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float] = []

    def forward(self, pred, target):
        loss = super().forward(pred, target)
        self.seen.append(float(loss.detach()))
        self.last_components = {"detection": loss.detach() / 2, "total": loss.detach()}
        return loss


def _trainer(loss_fn, epochs: int = 2, iterations: int = 3) -> SupervisedTrainer:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    data = [{"image": torch.randn(4, 3), "label": torch.randn(4, 1)} for _ in range(iterations)]
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
        loss_function=loss_fn,
    )


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pivot_monai.handlers.progress"]


def test_one_summary_line_per_epoch_with_means_lr_rate_and_eta(caplog, monkeypatch):
    monkeypatch.setenv("PIVOT_PROGRESS", "off")
    loss_fn = _LossWithComponents()
    trainer = _trainer(loss_fn)
    TrainingProgress(loss_fn, interval=1).attach(trainer)
    with caplog.at_level(logging.INFO, logger="pivot_monai.handlers.progress"):
        trainer.run()
    first, second, end = _lines(caplog)
    mean = sum(loss_fn.seen[:3]) / 3
    assert first.startswith(f"epoch 1/2: loss {mean:.4f} (detection {mean / 2:.4f}), lr 1.00e-02, ")
    assert re.search(r", [\d.]+ patches/s, [\d.]+ s, ETA [\d.]+ (s|min)$", first), first
    assert second.startswith("epoch 2/2: loss ") and "ETA" not in second  # nothing left
    assert end.startswith("training ended at epoch 2/2: 2 epoch(s) in ")


def test_the_summary_comes_before_the_epochs_validation_lines(caplog, monkeypatch):
    monkeypatch.setenv("PIVOT_PROGRESS", "off")
    loss_fn = _LossWithComponents()
    trainer = _trainer(loss_fn, epochs=1)
    from ignite.engine import Events

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: logging.getLogger("pivot_monai.val").info("val"))
    TrainingTelemetryHandler(None, loss_fn, interval=2).attach(trainer)  # attached after validation, as in train.yaml
    with caplog.at_level(logging.INFO):
        trainer.run()
    names = [r.name for r in caplog.records if r.name.startswith("pivot_monai")]
    assert names[:2] == ["pivot_monai.handlers.progress", "pivot_monai.val"]


def test_a_nan_step_stays_out_of_the_epoch_mean(caplog, monkeypatch):
    monkeypatch.setenv("PIVOT_PROGRESS", "off")
    losses = iter([1.0, float("nan"), 3.0])

    class _Fixed(torch.nn.Module):
        def forward(self, pred, target):
            return (pred.sum() * 0 + next(losses)).requires_grad_()

    trainer = _trainer(_Fixed(), epochs=1)
    TrainingProgress().attach(trainer)
    with caplog.at_level(logging.INFO, logger="pivot_monai.handlers.progress"):
        trainer.run()
    assert _lines(caplog)[0].startswith("epoch 1/1: loss 2.0000, lr")


def test_durations_read_as_seconds_minutes_or_hours():
    assert [format_duration(s) for s in (1.42, 42.4, 252, 4680)] == ["1.4 s", "42 s", "4.2 min", "1.3 h"]
    with pytest.raises(ValueError, match="log_interval"):
        TrainingProgress(interval=0)
