"""EMA of the network weights (``training.ema``): the average itself, its restart and its config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine

from pivot_monai.handlers.ema import averaged_network, build_ema, with_ema


def _stepper(net: nn.Module, values: list[float]) -> Engine:
    """An engine whose iteration ``i`` sets the network's weight to ``values[i]`` (an optimiser stand-in)."""

    def step(engine: Engine, batch: float) -> None:
        with torch.no_grad():
            net.weight.fill_(batch)

    return Engine(step)


def test_disabled_ema_is_none_and_leaves_the_network_in_place():
    net = nn.Linear(1, 1)
    assert build_ema(net, {"enabled": False}) is None and build_ema(net, None) is None
    assert averaged_network(net, None) is net
    assert with_ema({"model": net}, None) == {"model": net}


def test_ema_follows_the_decay_rule_from_the_weights_at_start():
    net = nn.Linear(1, 1, bias=False)
    ema = build_ema(net, {"enabled": True, "decay": 0.5, "warmup_iterations": 0})
    with torch.no_grad():
        net.weight.fill_(4.0)  # e.g. pretrained weights loaded after the config was parsed
    values = [8.0, 0.0, 2.0]
    engine = _stepper(net, values)
    ema.attach(engine)
    engine.run(values, max_epochs=1)
    expected = 4.0  # restarted from the network's weights when the engine started
    for v in values:
        expected = 0.5 * expected + 0.5 * v
    assert averaged_network(net, ema).weight.item() == pytest.approx(expected)
    assert averaged_network(net, ema) is not net and net.weight.item() == 2.0
    assert set(with_ema({"model": net}, ema)) == {"model", "ema_model"}


def test_ema_warm_up_forgets_faster_first():
    net = nn.Linear(1, 1, bias=False)
    slow = build_ema(net, {"enabled": True, "decay": 0.99, "warmup_iterations": 0})
    warm = build_ema(net, {"enabled": True, "decay": 0.99, "warmup_iterations": 10})
    for ema in (slow, warm):  # one engine each: ignite's warm-up always schedules state.ema_momentum
        with torch.no_grad():
            net.weight.fill_(0.0)
        engine = _stepper(net, [1.0] * 5)
        ema.attach(engine)
        engine.run([1.0] * 5, max_epochs=1)
    assert slow.ema_model.weight.item() == pytest.approx(1 - 0.99**5)
    assert warm.ema_model.weight.item() > 0.8  # momentum 0.5 falling to 0.01 over 10 iterations


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"decay": 1.0}, r"training.ema.decay must be in \(0, 1\)"),
        ({"decay": 0.0}, r"training.ema.decay must be in \(0, 1\)"),
        ({"warmup_iterations": -1}, "training.ema.warmup_iterations must be >= 0"),
    ],
)
def test_ema_config_errors_name_the_key(cfg, message):
    with pytest.raises(ValueError, match=message):
        build_ema(nn.Linear(1, 1), {"enabled": True, **cfg})
