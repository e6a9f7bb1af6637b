from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer

from pivot_monai.handlers.telemetry import TrainingTelemetryHandler, every, metric_tag, write_validation_scalars


class _Writer:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, float(value), int(step)))

    def flush(self) -> None:
        pass


class _LossWithComponents(torch.nn.MSELoss):
    def forward(self, pred, target):
        loss = super().forward(pred, target)
        self.last_components = {"detection": loss.detach(), "total": loss.detach()}
        return loss


def test_training_scalars_are_written_every_log_interval_under_train_tags():
    writer, loss_fn = _Writer(), _LossWithComponents()
    net = torch.nn.Linear(3, 1)
    data = [{"image": torch.randn(2, 3), "label": torch.randn(2, 1)} for _ in range(7)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=loss_fn,
    )
    TrainingTelemetryHandler(writer, loss_fn, interval=3).attach(trainer)
    trainer.run()
    per_iteration = [s for s in writer.scalars if s[0] != "train/epoch_lr"]
    tags = {tag for tag, _, _ in per_iteration}
    assert tags == {"train/loss", "train/loss_detection", "train/lr", "train/peak_rss_mb"}
    assert sorted({step for _, _, step in per_iteration}) == [3, 6]
    losses = [value for tag, value, _ in per_iteration if tag == "train/loss"]
    assert losses == [v for tag, v, _ in per_iteration if tag == "train/loss_detection"]
    assert [s for s in writer.scalars if s[0] == "train/epoch_lr"] == [("train/epoch_lr", pytest.approx(0.1), 1)]


def test_validation_metrics_are_written_as_val_tags_at_the_round_epoch():
    writer, engine = _Writer(), Engine(lambda e, b: None)
    engine.state.epoch = 4
    engine.state.metrics = {"val_froc": 0.5, "val_loss_detection": 0.25, "table": [1, 2]}
    write_validation_scalars(engine, writer)
    assert writer.scalars == [("val/froc", 0.5, 4), ("val/loss_detection", 0.25, 4)]
    assert metric_tag("val_loss") == "val/loss" and metric_tag("custom") == "val/custom"


def test_every_filters_iteration_events():
    engine, seen = Engine(lambda e, b: None), []
    record = lambda e: seen.append(e.state.iteration)  # noqa: E731
    engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=every(4)), record)
    engine.run([0] * 10, max_epochs=1)
    assert seen == [4, 8]
    with pytest.raises(ValueError, match="log_interval"):
        every(0)
