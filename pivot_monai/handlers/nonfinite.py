"""A guard against NaN/Inf losses and gradients (upstream users hit NaN logits under AMP: MONAI #6478)."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["NonFiniteGuard"]


class NonFiniteGuard:
    """Skip an optimiser step whose loss or gradients are not finite; stop after ``max_consecutive`` in a row.

    Runs on ``IterationEvents.BACKWARD_COMPLETED`` (attach it before gradient clipping). A bad step has all gradients
    set to ``None``, so the optimiser leaves every parameter (and its moments) untouched: the weights stay the last
    good ones, and any checkpoint written afterwards holds finite weights. ``engine.state.nonfinite_steps`` counts the
    skipped steps. After ``max_consecutive`` consecutive bad steps the run terminates with an error in the log.

    Args:
        max_consecutive: consecutive bad steps tolerated (``training.nonfinite_guard.max_consecutive``). Default 10.
        name: logger name.

    Raises:
        ValueError: ``max_consecutive`` < 1.
    """

    def __init__(self, max_consecutive: int = 10, name: str | None = None) -> None:
        if int(max_consecutive) < 1:
            raise ValueError(f"training.nonfinite_guard.max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = int(max_consecutive)
        self.consecutive = 0
        self.logger = logging.getLogger(name or __name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)
        if not hasattr(engine.state, "nonfinite_steps"):
            engine.state.nonfinite_steps = 0

    @staticmethod
    def _finite(engine: Engine) -> bool:
        loss = engine.state.output.get(CommonKeys.LOSS) if isinstance(engine.state.output, dict) else None
        if loss is not None and not math.isfinite(float(loss.detach() if torch.is_tensor(loss) else loss)):
            return False
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None and scaler.is_enabled():
            return True  # GradScaler.step already skips steps with inf/NaN gradients and lowers the scale
        grads = [p.grad for g in engine.optimizer.param_groups for p in g["params"] if p.grad is not None]
        return all(bool(torch.isfinite(gr).all()) for gr in grads)

    def __call__(self, engine: Engine) -> None:
        if self._finite(engine):
            self.consecutive = 0
            return
        self.consecutive += 1
        engine.state.nonfinite_steps = getattr(engine.state, "nonfinite_steps", 0) + 1
        engine.optimizer.zero_grad(set_to_none=True)
        self.logger.warning(
            "non-finite loss or gradients at iteration %d: step skipped (%d in a row, %d in total)",
            engine.state.iteration,
            self.consecutive,
            engine.state.nonfinite_steps,
        )
        if self.consecutive >= self.max_consecutive:
            self.logger.error(
                "terminating: %d consecutive non-finite steps (training.nonfinite_guard.max_consecutive). The weights "
                "are the last finite ones; lower training.learning_rate, enable gradient clipping or disable AMP.",
                self.consecutive,
            )
            engine.terminate()
