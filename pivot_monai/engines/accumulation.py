"""Gradient accumulation for MONAI's ``SupervisedTrainer`` as an ``iteration_update`` callable.

MONAI 1.5 ships no accumulation helper, so this wraps the trainer's standard iteration: the loss is divided by
``accumulation_steps``, ``zero_grad`` runs only at the first micro-step of a cycle and the optimiser (and AMP
scaler) steps only at the last one, or at the end of the epoch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GradientAccumulation", "make_iteration_update"]


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class GradientAccumulation:
    """``iteration_update`` that accumulates gradients over ``accumulation_steps`` iterations.

    Args:
        accumulation_steps: micro-steps per optimiser step (``training.accumulation_steps``), >= 1.

    Raises:
        ValueError: ``accumulation_steps`` < 1.
    """

    def __init__(self, accumulation_steps: int = 2) -> None:
        if int(accumulation_steps) < 1:
            raise ValueError(f"training.accumulation_steps must be >= 1, got {accumulation_steps}")
        self.steps = int(accumulation_steps)

    def __call__(self, engine: Any, batchdata: Any) -> Any:
        if self.steps == 1:
            return engine._iteration(engine, batchdata)
        it = engine.state.iteration  # 1-based, already incremented for this iteration
        epoch_length = engine.state.epoch_length or it
        first = (it - 1) % self.steps == 0
        last = it % self.steps == 0 or it % epoch_length == 0
        optimizer, loss_fn = engine.optimizer, engine.loss_function
        saved = {"zero_grad": optimizer.zero_grad, "step": optimizer.step}
        scaler = getattr(engine, "scaler", None)
        scaler_saved = {"step": scaler.step, "update": scaler.update} if scaler is not None else {}
        engine.loss_function = lambda *a, **k: loss_fn(*a, **k) / self.steps
        if not first:
            optimizer.zero_grad = _noop
        if not last:
            optimizer.step = _noop
            if scaler is not None:
                scaler.step, scaler.update = _noop, _noop
        try:
            return engine._iteration(engine, batchdata)
        finally:
            engine.loss_function = loss_fn
            optimizer.zero_grad, optimizer.step = saved["zero_grad"], saved["step"]
            if scaler is not None:
                scaler.step, scaler.update = scaler_saved["step"], scaler_saved["update"]


def make_iteration_update(accumulation_steps: int) -> GradientAccumulation | None:
    """``None`` (MONAI's default iteration) for 1 step, else a :class:`GradientAccumulation`."""
    return GradientAccumulation(accumulation_steps) if int(accumulation_steps) > 1 else None
