"""The console view of training: a progress bar per epoch and one summary line per epoch.

At the end of each epoch's last iteration (before the epoch's validation, learning-rate step and checkpoint, so the
line comes first) :class:`TrainingProgress` logs at INFO::

    epoch 3/22: loss 0.1234 (detection 0.0456, regression 0.0123, classification 0.0345), lr 1.00e-03,
    35.2 patches/s, 12.3 s, ETA 4.2 min

The loss and its components are the epoch's means (``loss_fn.last_components``); ``lr`` is the rate the epoch
trained with; patches/s counts the crops trained on per second of the epoch's iterations; the ETA is the mean wall
time of the epochs run by this process (validation and mining included) times the epochs left. During the epoch,
:func:`~pivot_monai.logs.progress` shows a live bar with the running loss on a terminal, and a plain line every
``PIVOT_PROGRESS_INTERVAL`` seconds otherwise. :class:`~pivot_monai.handlers.telemetry.TrainingTelemetryHandler`
attaches it; the per-iteration loss lines of MONAI's ``StatsHandler`` are DEBUG (:mod:`pivot_monai.logs`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Events

from pivot_monai.logs import progress

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["TrainingProgress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``1.4 s``, ``42 s``, ``4.2 min`` or ``1.3 h``.

    Example:
        >>> format_duration(1.42), format_duration(42.4), format_duration(252), format_duration(4680)
        ('1.4 s', '42 s', '4.2 min', '1.3 h')
    """
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _patches(engine: Engine) -> int:
    """Crops trained on in this iteration: the batch's images, else the decollated outputs."""
    batch = engine.state.batch
    image = batch.get("image") if isinstance(batch, dict) else None
    if torch.is_tensor(image):
        return int(image.shape[0])
    output = engine.state.output
    return len(output) if isinstance(output, list) else 1


def _loss(output: Any) -> torch.Tensor | None:
    item = output[0] if isinstance(output, list) and output else output
    loss = item.get("loss") if isinstance(item, dict) else None
    if loss is None:
        return None
    return loss.detach() if torch.is_tensor(loss) else torch.as_tensor(float(loss))


class TrainingProgress:
    """Per-epoch summary line at INFO and a per-epoch progress bar (module docstring).

    Sums stay tensors during the epoch (no device sync per iteration) and leave out non-finite steps; the bar's
    running loss is refreshed every ``interval`` iterations.

    Args:
        loss_fn: the loss module; its ``last_components`` are averaged per epoch. Default ``None``.
        interval: iterations between updates of the bar's running loss (``logging.log_interval``). Default 10.
        logger: where the lines go. Default this module's logger.

    Raises:
        ValueError: ``interval`` < 1.

    Example:
        ``TrainingProgress(loss_fn).attach(trainer)``
    """

    def __init__(self, loss_fn: Any = None, interval: int = 10, logger: logging.Logger | None = None) -> None:
        if int(interval) < 1:
            raise ValueError(f"logging.log_interval must be >= 1, got {interval}")
        self.loss_fn, self.interval = loss_fn, int(interval)
        self.logger = logger or logging.getLogger(__name__)
        self._bar: Any = None
        self._run_start, self._run_epoch = 0.0, 0
        self._reset()

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (rank 0 only under DDP)."""
        from pivot_monai.engines.distributed import is_main_process

        if not is_main_process():
            return
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def _reset(self) -> None:
        self._sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (sum, count) of finite values
        self._n, self._patch_count, self._lr = 0, 0, None
        self._epoch_start = time.perf_counter()

    def _add(self, name: str, value: torch.Tensor) -> None:
        finite = torch.isfinite(value)  # a step skipped for NaN/Inf (NonFiniteGuard) stays out of the mean
        total, count = self._sums.get(name, (torch.zeros_like(value), torch.zeros_like(value)))
        self._sums[name] = (total + torch.where(finite, value, torch.zeros_like(value)), count + finite)

    def _mean(self, name: str) -> float:
        total, count = self._sums[name]
        return float(total) / float(count) if float(count) else float("nan")

    def started(self, engine: Engine) -> None:
        """Remember where this process's part of the run starts (a resumed run starts after its checkpoint)."""
        self._run_start, self._run_epoch = time.perf_counter(), int(engine.state.epoch)

    def epoch_started(self, engine: Engine) -> None:
        """Open the epoch's bar."""
        self._close_bar()
        self._reset()
        left = engine.state.epoch_length - (engine.state.iteration % engine.state.epoch_length)
        self._bar = progress(
            total=left, desc=f"epoch {engine.state.epoch}/{engine.state.max_epochs}", unit="it", logger=self.logger
        )

    def iteration_completed(self, engine: Engine) -> None:
        """Add the iteration to the sums; after the epoch's last iteration, log the summary."""
        loss = _loss(engine.state.output)
        if loss is not None:
            self._add("loss", loss.float())
        for name, value in (getattr(self.loss_fn, "last_components", None) or {}).items():
            if name not in ("loss", "total") and torch.is_tensor(value):
                self._add(name, value.detach().float())
        self._n += 1
        self._patch_count += _patches(engine)
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is not None:  # the rate this epoch trains with (the scheduler steps at the epoch's end)
            self._lr = float(optimizer.param_groups[0]["lr"])
        if self._bar is not None:
            self._bar.update(1)
            if self._n % self.interval == 0 and "loss" in self._sums:
                self._bar.set_postfix(loss=f"{self._mean('loss'):.4f}", refresh=False)
        if engine.state.iteration % engine.state.epoch_length == 0:
            self._close_bar()
            self.logger.info("%s", self.summary(engine))

    def summary(self, engine: Engine) -> str:
        """The epoch's line (module docstring)."""
        seconds = time.perf_counter() - self._epoch_start
        parts = [f"epoch {engine.state.epoch}/{engine.state.max_epochs}:"]
        if "loss" in self._sums:
            loss = f"loss {self._mean('loss'):.4f}"
            components = [f"{k} {self._mean(k):.4f}" for k in self._sums if k != "loss"]
            parts.append(loss + (f" ({', '.join(components)})," if components else ","))
        if self._lr is not None:
            parts.append(f"lr {self._lr:.2e},")
        parts.append(f"{self._patch_count / max(seconds, 1e-9):.1f} patches/s, {format_duration(seconds)}")
        done = int(engine.state.epoch) - self._run_epoch
        left = int(engine.state.max_epochs) - int(engine.state.epoch)
        if done > 0 and left > 0:
            eta = (time.perf_counter() - self._run_start) / done * left
            parts[-1] += f", ETA {format_duration(eta)}"
        return " ".join(parts)

    def completed(self, engine: Engine) -> None:
        """Close the bar and log how long this process trained."""
        self._close_bar()
        epochs = int(engine.state.epoch) - self._run_epoch
        self.logger.info(
            "training ended at epoch %d/%d: %d epoch(s) in %s",
            engine.state.epoch,
            engine.state.max_epochs,
            epochs,
            format_duration(time.perf_counter() - self._run_start),
        )

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
