"""Validation-metric handlers and small wiring helpers used by the bundle config."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.handlers import IgniteMetricHandler

from pivot_monai.metrics.cumulative import METRIC_NAMES, DetectionMetric, FROCCache

__all__ = [
    "attach_optional",
    "build_validation_metrics",
    "close_writer",
    "detection_output_transform",
    "make_summary_writer",
    "metric_score",
]

logger = logging.getLogger(__name__)


def detection_output_transform(output: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(candidate tables, nodule tables + scan-stats row)`` from a decollated evaluator output."""
    items = output if isinstance(output, list) else [output]
    y_pred = [item["candidates"] for item in items]
    y = [torch.cat([torch.as_tensor(item["label"]["nodules"]).float().cpu(), item["scan_stats"]]) for item in items]
    return y_pred, y


def build_validation_metrics(
    names: Sequence[str], key_metric: str = "val_froc", threshold: float = 0.5
) -> tuple[dict[str, IgniteMetricHandler], dict[str, IgniteMetricHandler]]:
    """``(key_val_metric, additional_metrics)`` for the evaluator from ``validation.metrics``.

    Engine metric names are ``val_<name>``, except ``froc_score`` which is ``val_froc``. ``key_metric``
    (``validation.save_best_metric``) selects the key metric used for best-checkpoint saving.

    Raises:
        ValueError: unknown metric name, or ``key_metric`` not among the configured metrics.
    """
    handlers = {}
    froc_cache = FROCCache()  # the metrics of one round match the same candidates: once
    for name in names:
        if name not in METRIC_NAMES:
            raise ValueError(f"validation.metrics: unknown metric {name!r}; valid: {list(METRIC_NAMES)}")
        engine_name = "val_froc" if name == "froc_score" else f"val_{name}"
        handlers[engine_name] = IgniteMetricHandler(
            metric_fn=DetectionMetric(name, threshold=threshold, froc_cache=froc_cache),
            output_transform=detection_output_transform,
            save_details=False,
        )
    if key_metric not in handlers:
        raise ValueError(
            f"validation.save_best_metric={key_metric!r} is not computed; computed: {sorted(handlers)} "
            f"(add its name to validation.metrics)"
        )
    key = {key_metric: handlers.pop(key_metric)}
    return key, handlers


def metric_score(name: str, mode: str = "max") -> Callable[[Any], float]:
    """Score function for early stopping: the engine metric ``name``, negated when ``mode`` is ``min``."""
    if mode not in ("max", "min"):
        raise ValueError(f"training.early_stopping.mode must be 'max' or 'min', got {mode!r}")
    sign = 1.0 if mode == "max" else -1.0

    def score(engine: Any) -> float:
        if name not in engine.state.metrics:
            raise KeyError(
                f"training.early_stopping.monitor={name!r} is not a validation metric; available: "
                f"{sorted(engine.state.metrics)}"
            )
        return sign * float(engine.state.metrics[name])

    return score


def attach_optional(engine: Any, handler: Any, trainer: Any = None, evaluator: Any = None) -> None:
    """Attach ``handler`` unless it was disabled in the config (``_disabled_`` resolves it to ``None``).

    ``trainer`` is given to handlers that stop training from the evaluator (``set_trainer``); ``evaluator`` to
    handlers that log both engines.
    """
    if handler is None:
        return
    if trainer is not None and hasattr(handler, "set_trainer"):
        handler.set_trainer(trainer)
    if evaluator is not None:
        handler.attach(engine, evaluator)
    else:
        handler.attach(engine)


def make_summary_writer(log_dir: str | Path, enabled: bool = True) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``log_dir`` (``None`` when disabled or on a non-zero DDP rank)."""
    import torch.distributed as dist

    if not enabled or (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
        return None
    from torch.utils.tensorboard import SummaryWriter

    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(log_dir))


def close_writer(writer: Any) -> None:
    """Flush and close a summary writer (no-op for ``None``)."""
    if writer is not None:
        writer.flush()
        writer.close()
