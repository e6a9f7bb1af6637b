from __future__ import annotations

import torch
from monai.engines import SupervisedTrainer

from pivot_monai.engines.accumulation import GradientAccumulation, make_iteration_update


def _train(steps: int, batches: list[torch.Tensor]) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1, bias=False)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    calls = []
    original = opt.step
    opt.step = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    data = [{"image": b, "label": torch.zeros(len(b), 1)} for b in batches]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=opt,
        loss_function=torch.nn.MSELoss(),
        iteration_update=make_iteration_update(steps),
    )
    trainer.run()
    return net, len(calls)


def test_accumulated_steps_equal_one_big_batch():
    rng = torch.Generator().manual_seed(1)
    batches = [torch.randn(2, 3, generator=rng) for _ in range(4)]
    acc, n_steps = _train(2, batches)
    assert n_steps == 2
    # reference: two optimiser steps on the concatenated pairs of micro-batches
    big = [torch.cat(batches[0:2]), torch.cat(batches[2:4])]
    ref, ref_steps = _train(1, big)
    assert ref_steps == 2
    torch.testing.assert_close(acc.weight, ref.weight)


def test_epoch_end_flushes_a_partial_cycle():
    batches = [torch.randn(2, 3) for _ in range(3)]
    _, n_steps = _train(2, batches)
    assert n_steps == 2  # after iteration 2 and at the end of the epoch (iteration 3)
    assert make_iteration_update(1) is None and isinstance(make_iteration_update(3), GradientAccumulation)
