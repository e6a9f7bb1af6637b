from __future__ import annotations

import pytest
import torch

from pivot_monai.engines.optim import build_lr_scheduler, build_optimizer


def _params():
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize(
    "cfg,cls",
    [
        ({"type": "adamw", "betas": [0.8, 0.99], "eps": 1e-7, "weight_decay": 0.01}, torch.optim.AdamW),
        ({"type": "sgd", "momentum": 0.95, "nesterov": True}, torch.optim.SGD),
    ],
)
def test_optimizers_take_their_keys(cfg, cls):
    opt = build_optimizer(_params(), 0.01, cfg)
    assert isinstance(opt, cls)
    group = opt.param_groups[0]
    if cls is torch.optim.SGD:
        assert group["momentum"] == 0.95 and group["nesterov"] is True
    else:
        assert group["betas"] == (0.8, 0.99) and group["eps"] == 1e-7 and group["weight_decay"] == 0.01


def test_unknown_optimizer_and_scheduler():
    with pytest.raises(ValueError, match="training.optimizer.type"):
        build_optimizer(_params(), 0.01, {"type": "lamb"})
    with pytest.raises(ValueError, match="training.scheduler.type"):
        build_lr_scheduler(build_optimizer(_params(), 0.01, {}), {"type": "cyclic"}, 10)


def test_cosine_warmup_then_decay_to_min_lr():
    opt = build_optimizer(_params(), 0.1, {"type": "sgd", "momentum": 0.0})
    sched = build_lr_scheduler(opt, {"type": "cosine", "warmup_epochs": 2, "min_lr": 0.001}, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert opt.param_groups[0]["lr"] >= 0.001


def test_step_and_plateau():
    opt = build_optimizer(_params(), 0.1, {"type": "sgd", "momentum": 0.0})
    sched = build_lr_scheduler(opt, {"type": "step", "step_size": 2, "gamma": 0.5}, 10)
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    opt2 = build_optimizer(_params(), 0.1, {"type": "sgd", "momentum": 0.0})
    plateau = build_lr_scheduler(opt2, {"type": "plateau", "patience": 0, "factor": 0.5}, 10)
    plateau.step(0.5)
    plateau.step(0.5)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.05)


def test_the_cosine_holds_min_lr_after_t_max_and_rejects_a_bad_t_max():
    from pivot_monai.engines.optim import HeldWarmupCosineSchedule

    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler = build_lr_scheduler(optimizer, {"type": "cosine", "warmup_epochs": 0, "min_lr": 0.0, "t_max": 4}, 10)
    assert isinstance(scheduler, HeldWarmupCosineSchedule) and scheduler.t_total == 4
    lrs = []
    for _ in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:5] == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466, 0.0]) and lrs[5:] == [0.0] * 3
    with pytest.raises(ValueError, match="training.scheduler.t_max must be a whole number of epochs"):
        build_lr_scheduler(optimizer, {"type": "cosine", "t_max": 2.5}, 10)
    with pytest.raises(ValueError, match="training.scheduler.mode must be 'max' or 'min'"):
        build_lr_scheduler(optimizer, {"type": "plateau", "mode": "up"}, 10)
