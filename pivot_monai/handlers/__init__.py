"""handlers stage of PIVOT: thin ignite handlers over the maths in ``metrics``/``losses``."""

from __future__ import annotations

from pivot_monai.handlers.ema import WeightAverage, build_ema
from pivot_monai.handlers.gradients import GradientClipHandler
from pivot_monai.handlers.nonfinite import NonFiniteGuard
from pivot_monai.handlers.telemetry import TrainingTelemetryHandler, peak_rss_mb
from pivot_monai.handlers.validation import (
    ValidationLossHandler,
    attach_optional,
    build_validation_metrics,
    close_writer,
    detection_output_transform,
    make_summary_writer,
    metric_score,
)
from pivot_monai.handlers.wandb import WandbHandler, make_wandb_handler

__all__ = [
    "GradientClipHandler",
    "NonFiniteGuard",
    "TrainingTelemetryHandler",
    "ValidationLossHandler",
    "WandbHandler",
    "WeightAverage",
    "attach_optional",
    "build_ema",
    "build_validation_metrics",
    "close_writer",
    "detection_output_transform",
    "make_summary_writer",
    "make_wandb_handler",
    "metric_score",
    "peak_rss_mb",
]
