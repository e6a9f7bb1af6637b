"""TensorBoard telemetry of a training step: loss components, learning rate, gradient norm and memory."""

from __future__ import annotations

import logging
import resource
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Events

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["TrainingTelemetryHandler", "peak_rss_mb"]


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class TrainingTelemetryHandler:
    """Write ``train/loss_<component>``, ``train/lr``, ``train/grad_norm`` and memory scalars every ``interval`` steps.

    The loss components come from ``loss_fn.last_components`` (set by
    :class:`~pivot_monai.losses.MultiTaskDetectionLoss`); the gradient norm from
    :class:`~pivot_monai.handlers.gradients.GradientClipHandler`.

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter`` (``None`` on non-zero DDP ranks: no-op).
        loss_fn: the loss module.
        interval: iterations between writes (``logging.log_interval``). Default 10.
    """

    def __init__(self, summary_writer: Any, loss_fn: Any = None, interval: int = 10) -> None:
        if interval < 1:
            raise ValueError(f"logging.log_interval must be >= 1, got {interval}")
        self.writer, self.loss_fn, self.interval = summary_writer, loss_fn, int(interval)
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def __call__(self, engine: Engine) -> None:
        if self.writer is None:
            return
        step = engine.state.iteration
        for name, value in (getattr(self.loss_fn, "last_components", None) or {}).items():
            self.writer.add_scalar(f"train/loss_{name}", float(value), step)
        self.writer.add_scalar("train/lr", float(engine.optimizer.param_groups[0]["lr"]), step)
        if getattr(engine.state, "grad_norm", None) is not None:
            self.writer.add_scalar("train/grad_norm", float(engine.state.grad_norm), step)
        self.writer.add_scalar("memory/peak_rss_mb", peak_rss_mb(), step)
        if torch.cuda.is_available():
            self.writer.add_scalar("memory/cuda_max_allocated_mb", torch.cuda.max_memory_allocated() / 2**20, step)

    def epoch_completed(self, engine: Engine) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/epoch_lr", float(engine.optimizer.param_groups[0]["lr"]), engine.state.epoch)
            self.writer.flush()
