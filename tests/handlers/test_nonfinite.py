from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from pivot_monai.handlers import GradientClipHandler, NonFiniteGuard


def _trainer(losses: list[float], max_consecutive: int = 3):
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.1)
    values = iter(losses)

    def loss_fn(pred, y):
        v = next(values)
        return (pred.sum() - pred.sum().detach()) + torch.tensor(v) if math.isfinite(v) else pred.sum() * v

    data = [{"image": torch.ones(1, 2), "label": torch.zeros(1, 1)} for _ in losses]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=opt,
        loss_function=loss_fn,
    )
    NonFiniteGuard(max_consecutive=max_consecutive).attach(trainer)
    GradientClipHandler(max_norm=1.0).attach(trainer)
    return trainer, net


def test_bad_steps_are_skipped_and_weights_stay_finite():
    trainer, net = _trainer([1.0, float("nan"), 1.0, float("inf"), 1.0])
    before_nan = {}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: before_nan.setdefault(e.state.iteration, [p.detach().clone() for p in net.parameters()]),
    )
    trainer.run()
    assert trainer.state.nonfinite_steps == 2 and trainer.state.iteration == 5
    assert all(torch.isfinite(p).all() for p in net.parameters())
    for a, b in zip(before_nan[1], before_nan[2]):  # iteration 2 (NaN) changed nothing
        assert torch.equal(a, b)


def test_consecutive_bad_steps_terminate_with_a_clear_message(caplog):
    trainer, net = _trainer([1.0, float("nan"), float("nan"), float("nan"), 1.0, 1.0], max_consecutive=3)
    trainer.run()
    assert trainer.state.iteration == 4  # stopped right after the third bad step
    assert "3 consecutive non-finite steps" in caplog.text
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_invalid_argument():
    with pytest.raises(ValueError, match="max_consecutive"):
        NonFiniteGuard(0)
