from __future__ import annotations

import pytest
import torch
from monai.engines import SupervisedTrainer

from pivot_monai.engines.accumulation import GradientAccumulation, accumulation_cycle, make_iteration_update
from pivot_monai.handlers.gradients import GradientClipHandler


def _samples(n: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=rng), torch.randn(n, 2, generator=rng)


def _train(steps: int, batch_size: int, samples, epochs: int = 1, max_norm: float | None = None, lr: float = 0.1):
    """``(gradients at each optimiser step, final weights, trainer)`` of SGD on a linear layer, in a fixed order."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.5)
    grads = []
    step = opt.step

    def recording_step(*args, **kwargs):
        grads.append(torch.cat([p.grad.flatten().clone() for p in net.parameters()]))
        return step(*args, **kwargs)

    opt.step = recording_step
    x, y = samples
    data = [{"image": x[i : i + batch_size], "label": y[i : i + batch_size]} for i in range(0, len(x), batch_size)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=data,
        network=net,
        optimizer=opt,
        loss_function=torch.nn.MSELoss(),
        iteration_update=make_iteration_update(steps),
    )
    if max_norm is not None:
        GradientClipHandler(max_norm=max_norm).attach(trainer)
    trainer.run()
    return grads, torch.cat([p.detach().flatten() for p in net.parameters()]), trainer


@pytest.mark.parametrize("max_norm", [None, 0.1])
@pytest.mark.parametrize("steps,num_samples", [(2, 3), (3, 5), (2, 4)])
def test_accumulated_batch_of_one_matches_the_larger_batch_over_several_epochs(steps, num_samples, max_norm):
    # batch 1 with N micro-steps vs batch N without accumulation on the same samples in the same order: the epoch's
    # last, shorter cycle is the loader's smaller last batch; clipping (0.1 is below every norm here) applies to both
    samples = _samples(num_samples)
    acc_grads, acc_weights, _ = _train(steps, 1, samples, epochs=3, max_norm=max_norm)
    ref_grads, ref_weights, _ = _train(1, steps, samples, epochs=3, max_norm=max_norm)
    assert len(acc_grads) == len(ref_grads) == 3 * -(-num_samples // steps)
    for acc, ref in zip(acc_grads, ref_grads):
        torch.testing.assert_close(acc, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(acc_weights, ref_weights, rtol=0, atol=1e-6)


def test_a_new_epoch_starts_from_zero_gradients_and_a_partial_cycle_is_its_mean():
    # lr 0 keeps the weights, so every micro-batch's gradient is the one of the initial network
    samples = _samples(3)
    grads, _, _ = _train(2, 1, samples, epochs=2, lr=0.0)
    single = [_train(1, 1, (samples[0][i : i + 1], samples[1][i : i + 1]), lr=0.0)[0][0] for i in range(3)]
    expected = [(single[0] + single[1]) / 2, single[2]] * 2  # epoch 2 does not re-apply epoch 1's b2
    assert len(grads) == 4
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_the_epoch_end_step_is_clipped():
    # 3 batches, 2 micro-steps: the step after iteration 2 and the epoch-end step after iteration 3 are both clipped
    grads, _, trainer = _train(2, 1, _samples(3), max_norm=1e-3)
    assert trainer.state.optimizer_step is True
    assert [float(g.norm()) for g in grads] == pytest.approx([1e-3, 1e-3], rel=1e-4)


def test_logged_loss_is_the_micro_batch_loss_not_the_divided_one():
    samples = _samples(2)
    _, _, trainer = _train(2, 1, samples, lr=0.0)
    torch.manual_seed(0)
    expected = torch.nn.functional.mse_loss(torch.nn.Linear(4, 2)(samples[0][1:]), samples[1][1:])
    assert float(trainer.state.output[0]["loss"]) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_accumulation_cycle_counts_within_the_epoch():
    cycles = [tuple(accumulation_cycle(i, epoch_length=3, steps=2)) for i in range(1, 7)]
    assert cycles == [(True, False, 2), (False, True, 2), (True, True, 1)] * 2
    assert [c.size for c in (accumulation_cycle(i, 5, 3) for i in range(1, 6))] == [3, 3, 3, 2, 2]


def test_factory_and_argument_checks():
    assert make_iteration_update(1) is None and isinstance(make_iteration_update(3), GradientAccumulation)
    with pytest.raises(ValueError, match="accumulation_steps must be >= 1"):
        GradientAccumulation(0)
