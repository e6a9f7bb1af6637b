"""Per-epoch metrics as JSON lines: what the training API (and anyone tailing the file) reads while a run trains.

One line per event, appended and flushed as it happens:

- ``{"kind": "train", "epoch": E, "iteration": I, "loss": ..., "loss_components": {...}, "lr": ...}`` at the end
  of every training epoch: the epoch's mean loss and mean loss components (``loss_fn.last_components``);
- ``{"kind": "val", "epoch": E, "metrics": {"val_froc": ..., ...}}`` after every validation round;
- ``{"kind": "end", "epoch": E, "max_epochs": M}`` when the trainer completes (also after an early or graceful stop).

Every line also carries ``attempt`` (1 for the first launch, 2 for the first resume, ...) and ``time`` (Unix
seconds). Non-finite numbers are written as ``null``, so every line is strict JSON.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ignite.engine import Events

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["MetricsLogHandler", "attach_metrics_log"]


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _iteration_loss(output: Any) -> float | None:
    items = output if isinstance(output, list) else [output]
    first = items[0] if items else None
    return _number(first.get("loss")) if isinstance(first, dict) else None


class MetricsLogHandler:
    """Append per-epoch training and validation records to a JSON-lines file.

    Args:
        path: the ``.jsonl`` file (its folder is created).
        loss_fn: the loss module; its ``last_components`` (if any) are averaged per epoch. Default ``None``.
        attempt: written into every record, to tell a resumed run's records apart. Default 1.

    Example:
        ``MetricsLogHandler("runs/x/metrics.jsonl", loss_fn).attach(trainer, evaluator)``
    """

    def __init__(self, path: str | Path, loss_fn: Any = None, attempt: int = 1) -> None:
        if int(attempt) < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        self.path, self.loss_fn, self.attempt = Path(path), loss_fn, int(attempt)
        self.trainer: Engine | None = None
        self.logger = logging.getLogger(__name__)
        self._reset()

    def attach(self, trainer: Engine, evaluator: Engine | None = None) -> None:
        from pivot_monai.engines.distributed import is_main_process

        if not is_main_process():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.trainer = trainer
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: self._reset())
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self)
        trainer.add_event_handler(Events.COMPLETED, self.completed)
        if evaluator is not None:
            evaluator.add_event_handler(Events.COMPLETED, self.validation_completed)

    def _reset(self) -> None:
        self._loss_sum, self._loss_n = 0.0, 0
        self._components: dict[str, float] = {}
        self._component_n: dict[str, int] = {}
        self._lr: float | None = None

    def iteration_completed(self, engine: Engine) -> None:
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is not None:  # the rate this epoch trained with (the scheduler steps at the epoch's end)
            self._lr = _number(optimizer.param_groups[0]["lr"])
        loss = _iteration_loss(engine.state.output)
        if loss is not None:
            self._loss_sum, self._loss_n = self._loss_sum + loss, self._loss_n + 1
        for name, value in (getattr(self.loss_fn, "last_components", None) or {}).items():
            v = _number(value)
            if v is not None:
                self._components[name] = self._components.get(name, 0.0) + v
                self._component_n[name] = self._component_n.get(name, 0) + 1

    def __call__(self, engine: Engine) -> None:
        self.write(
            kind="train",
            epoch=engine.state.epoch,
            iteration=engine.state.iteration,
            loss=self._loss_sum / self._loss_n if self._loss_n else None,
            loss_components={k: v / self._component_n[k] for k, v in self._components.items()},
            lr=self._lr,
        )

    def validation_completed(self, evaluator: Engine) -> None:
        epoch = self.trainer.state.epoch if self.trainer is not None else evaluator.state.epoch
        self.write(kind="val", epoch=epoch, metrics={k: _number(v) for k, v in evaluator.state.metrics.items()})

    def completed(self, engine: Engine) -> None:
        self.write(kind="end", epoch=engine.state.epoch, max_epochs=engine.state.max_epochs)

    def write(self, **record: Any) -> None:
        """Append one record (with ``attempt`` and ``time``) as a line and flush it."""
        line = json.dumps({**record, "attempt": self.attempt, "time": round(time.time(), 3)}, allow_nan=False)
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as err:  # metrics are a view of the run, never a reason to stop it
            self.logger.warning("metrics log %s: %s", self.path, err)


def attach_metrics_log(
    trainer: Engine, evaluator: Engine | None, path: str | Path, loss_fn: Any = None, attempt: int = 1
) -> MetricsLogHandler:
    """Build a :class:`MetricsLogHandler` and attach it (the one-line form for a config's ``initialize`` list)."""
    handler = MetricsLogHandler(path, loss_fn, attempt)
    handler.attach(trainer, evaluator)
    return handler
