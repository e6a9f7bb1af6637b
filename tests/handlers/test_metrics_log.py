"""MetricsLogHandler on dummy ignite engines: per-epoch train records, validation records, the end record."""

from __future__ import annotations

import json
import math

import torch
from ignite.engine import Engine, Events

from pivot_monai.handlers.metrics_log import attach_metrics_log


class _Loss:
    last_components: dict = {}


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writes_epoch_means_validation_metrics_and_end(tmp_path):
    losses = iter([1.0, 3.0, float("nan"), 2.0])
    loss_fn = _Loss()
    evaluator = Engine(lambda e, b: None)

    def step(engine, batch):
        loss = next(losses)
        loss_fn.last_components = {"detection": loss / 2}
        return [{"loss": torch.tensor(loss)}]

    trainer = Engine(step)
    trainer.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)

    @evaluator.on(Events.COMPLETED)
    def _metrics(engine):
        engine.state.metrics = {"val_froc": 0.25, "val_size_accuracy": math.nan}

    path = tmp_path / "run" / "metrics.jsonl"
    attach_metrics_log(trainer, evaluator, path, loss_fn, attempt=2)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))
    trainer.run([0, 1], max_epochs=2)

    records = _records(path)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["epoch"] for r in train] == [1, 2] and [r["iteration"] for r in train] == [2, 4]
    assert train[0]["loss"] == 2.0 and train[1]["loss"] == 2.0  # the NaN step is left out of the mean
    assert train[0]["loss_components"] == {"detection": 1.0} and train[0]["lr"] == 0.5
    val = [r for r in records if r["kind"] == "val"]
    assert val[0]["metrics"] == {"val_froc": 0.25, "val_size_accuracy": None} and val[0]["epoch"] == 1
    assert records[-1]["kind"] == "end" and records[-1]["epoch"] == 2 and records[-1]["max_epochs"] == 2
    assert {r["attempt"] for r in records} == {2} and all("time" in r for r in records)


def test_an_unwritable_path_is_logged_not_raised(tmp_path, caplog):
    trainer = Engine(lambda e, b: {"loss": 1.0})
    folder = tmp_path / "ro"
    attach_metrics_log(trainer, None, folder / "metrics.jsonl")
    folder.rmdir()
    folder.write_text("a file where the folder was")
    trainer.run([0], max_epochs=1)
    assert "metrics log" in caplog.text
