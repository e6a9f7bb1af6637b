"""Gradient accumulation for MONAI's ``SupervisedTrainer`` as an ``iteration_update`` callable.

MONAI 1.5 ships no accumulation helper, so this wraps the trainer's standard iteration. Cycles of
``accumulation_steps`` micro-steps are counted **within the epoch**: the first micro-step of every epoch zeroes the
gradients, and the last iteration of an epoch closes the cycle it is in, so no gradient crosses an epoch boundary.
A cycle of ``k`` micro-batches divides each loss by ``k`` (the last cycle of an epoch may be shorter than
``accumulation_steps``), so its step applies the mean gradient of its micro-batches, as a DataLoader's smaller last
batch does. ``engine.state.optimizer_step`` says whether the current iteration ends with an optimiser step:
:class:`~pivot_monai.handlers.gradients.GradientClipHandler` clips exactly those, the epoch-end step included.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from monai.utils import CommonKeys

__all__ = ["AccumulationCycle", "GradientAccumulation", "accumulation_cycle", "make_iteration_update"]


class AccumulationCycle(NamedTuple):
    """Where an iteration sits in its accumulation cycle."""

    first: bool
    """The cycle's first micro-step: the gradients are zeroed before its backward."""
    last: bool
    """The cycle's last micro-step: the optimiser steps after its backward."""
    size: int
    """Micro-steps in the cycle: ``accumulation_steps``, or fewer for the epoch's last cycle."""


def accumulation_cycle(iteration: int, epoch_length: int, steps: int) -> AccumulationCycle:
    """The accumulation cycle of a 1-based global ``iteration``, counted within its epoch.

    Args:
        iteration: ``engine.state.iteration`` (1-based, counted over all epochs).
        epoch_length: iterations per epoch (``engine.state.epoch_length``).
        steps: micro-steps per optimiser step (``training.accumulation_steps``).

    Returns:
        the :class:`AccumulationCycle`.

    Example:
        >>> [tuple(accumulation_cycle(i, 3, 2)) for i in (3, 4)]  # end of epoch 1, start of epoch 2
        [(True, True, 1), (True, False, 2)]
    """
    index = (int(iteration) - 1) % int(epoch_length)
    start = index - index % int(steps)
    size = min(int(steps), int(epoch_length) - start)
    return AccumulationCycle(first=index == start, last=index == start + size - 1, size=size)


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class GradientAccumulation:
    """``iteration_update`` that accumulates gradients over ``accumulation_steps`` iterations within each epoch.

    ``engine.state.output["loss"]`` stays the micro-batch's own loss (not divided), so the logged training loss does
    not depend on ``accumulation_steps``.

    Args:
        accumulation_steps: micro-steps per optimiser step (``training.accumulation_steps``), >= 1. Default 2.

    Raises:
        ValueError: ``accumulation_steps`` < 1; at run time, a data loader without a length (the epoch's last
            cycle cannot be known).
    """

    def __init__(self, accumulation_steps: int = 2) -> None:
        if int(accumulation_steps) < 1:
            raise ValueError(f"training.accumulation_steps must be >= 1, got {accumulation_steps}")
        self.steps = int(accumulation_steps)

    def __call__(self, engine: Any, batchdata: Any) -> Any:
        if not engine.state.epoch_length:
            raise ValueError(
                "training.accumulation_steps > 1 needs a data loader with a length (engine.state.epoch_length is "
                f"{engine.state.epoch_length!r}); pass epoch_length to the trainer or set accumulation_steps: 1"
            )
        cycle = accumulation_cycle(engine.state.iteration, engine.state.epoch_length, self.steps)
        engine.state.optimizer_step = cycle.last
        optimizer, loss_fn = engine.optimizer, engine.loss_function
        saved = {"zero_grad": optimizer.zero_grad, "step": optimizer.step}
        scaler = getattr(engine, "scaler", None)
        scaler_saved = {"step": scaler.step, "update": scaler.update} if scaler is not None else {}
        losses = []

        def scaled_loss(*args: Any, **kwargs: Any) -> Any:
            losses.append(loss_fn(*args, **kwargs))
            return losses[-1] / cycle.size

        engine.loss_function = scaled_loss
        if not cycle.first:
            optimizer.zero_grad = _noop
        if not cycle.last:
            optimizer.step = _noop
            if scaler is not None:
                scaler.step, scaler.update = _noop, _noop
        try:
            output = engine._iteration(engine, batchdata)
        finally:
            engine.loss_function = loss_fn
            optimizer.zero_grad, optimizer.step = saved["zero_grad"], saved["step"]
            if scaler is not None:
                scaler.step, scaler.update = scaler_saved["step"], scaler_saved["update"]
        if losses:  # MONAI decollates the output before it returns: one dict per sample, each with the loss
            loss = losses[-1].detach().mean()
            for item in output if isinstance(output, list) else [output]:
                if isinstance(item, dict) and CommonKeys.LOSS in item:
                    item[CommonKeys.LOSS] = loss
        return output


def make_iteration_update(accumulation_steps: int) -> GradientAccumulation | None:
    """``None`` (MONAI's default iteration) for 1 step, else a :class:`GradientAccumulation`."""
    return GradientAccumulation(accumulation_steps) if int(accumulation_steps) > 1 else None
