"""TensorBoard scalars of training and validation, under one naming scheme: ``train/...`` and ``val/...``.

The trainer's per-iteration scalars (loss and its components, learning rate, gradient norm, memory) are written
every ``logging.log_interval`` iterations by :class:`TrainingTelemetryHandler`; the evaluator's metrics, validation
loss included, once per round by :func:`write_validation_scalars` at the trainer's epoch. The tags are listed in
``bundle/docs/README.md``. The same handler puts the console view on the trainer: a bar per epoch and one summary
line per epoch (:class:`~pivot_monai.handlers.progress.TrainingProgress`).
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Events
from monai.utils import CommonKeys, is_scalar

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "TrainingTelemetryHandler",
    "every",
    "metric_tag",
    "output_loss",
    "peak_rss_mb",
    "write_validation_scalars",
]


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def metric_tag(name: str) -> str:
    """The ``val/...`` tag of an evaluator metric: ``val_froc`` -> ``val/froc``, ``val_loss`` -> ``val/loss``."""
    return "val/" + (name[len("val_") :] if name.startswith("val_") else name)


def every(interval: int) -> Callable[[Any, int], bool]:
    """An ignite event filter true every ``interval`` iterations (``logging.log_interval``), for MONAI's
    ``StatsHandler(iteration_log=...)``.

    Raises:
        ValueError: ``interval`` < 1.
    """
    if int(interval) < 1:
        raise ValueError(f"logging.log_interval must be >= 1, got {interval}")
    n = int(interval)
    return lambda engine, event: event % n == 0


def output_loss(output: Any) -> float | None:
    """The loss of a trainer output (a dict, or MONAI's decollated list of dicts), ``None`` when it has none."""
    item = output[0] if isinstance(output, list) and output else output
    loss = item.get(CommonKeys.LOSS) if isinstance(item, dict) else None
    return None if loss is None else float(loss)


def write_validation_scalars(engine: Engine, writer: Any) -> None:
    """Write every scalar of ``engine.state.metrics`` as ``val/<name>`` at the evaluator's epoch (the trainer's).

    The ``epoch_event_writer`` of MONAI's ``TensorBoardStatsHandler`` on the evaluator (``validate#handlers``).
    """
    for name, value in engine.state.metrics.items():
        if is_scalar(value):
            writer.add_scalar(metric_tag(name), float(value), engine.state.epoch)
    writer.flush()


class TrainingTelemetryHandler:
    """Write the trainer's scalars every ``interval`` iterations.

    Tags: ``train/loss`` (the iteration's loss), ``train/loss_detection``, ``train/loss_regression``,
    ``train/loss_classification`` (from ``loss_fn.last_components``, set by
    :class:`~pivot_monai.losses.MultiTaskDetectionLoss`), ``train/lr``, ``train/grad_norm`` (from
    :class:`~pivot_monai.handlers.gradients.GradientClipHandler`), ``train/peak_rss_mb`` and, on CUDA,
    ``train/cuda_max_allocated_mb``; once per epoch ``train/epoch_lr``. With ``console`` it also attaches
    :class:`~pivot_monai.handlers.progress.TrainingProgress` (epoch bar and summary line).

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter`` (``None``: no TensorBoard, e.g. on non-zero DDP
            ranks or with ``logging.tensorboard: false``).
        loss_fn: the loss module.
        interval: iterations between writes (``logging.log_interval``). Default 10.
        console: show the epoch bar and the per-epoch summary line. Default True.

    Raises:
        ValueError: ``interval`` < 1.
    """

    def __init__(self, summary_writer: Any, loss_fn: Any = None, interval: int = 10, console: bool = True) -> None:
        if interval < 1:
            raise ValueError(f"logging.log_interval must be >= 1, got {interval}")
        self.writer, self.loss_fn, self.interval = summary_writer, loss_fn, int(interval)
        self.console = bool(console)
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        if self.console:
            from pivot_monai.handlers.progress import TrainingProgress

            TrainingProgress(self.loss_fn, self.interval).attach(engine)

    def __call__(self, engine: Engine) -> None:
        if self.writer is None:
            return
        step = engine.state.iteration
        loss = output_loss(engine.state.output)
        if loss is not None:
            self.writer.add_scalar("train/loss", loss, step)
        for name, value in (getattr(self.loss_fn, "last_components", None) or {}).items():
            if name != "total":  # the total is train/loss
                self.writer.add_scalar(f"train/loss_{name}", float(value), step)
        self.writer.add_scalar("train/lr", float(engine.optimizer.param_groups[0]["lr"]), step)
        if getattr(engine.state, "grad_norm", None) is not None:
            self.writer.add_scalar("train/grad_norm", float(engine.state.grad_norm), step)
        self.writer.add_scalar("train/peak_rss_mb", peak_rss_mb(), step)
        if torch.cuda.is_available():
            self.writer.add_scalar("train/cuda_max_allocated_mb", torch.cuda.max_memory_allocated() / 2**20, step)

    def epoch_completed(self, engine: Engine) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/epoch_lr", float(engine.optimizer.param_groups[0]["lr"]), engine.state.epoch)
            self.writer.flush()
