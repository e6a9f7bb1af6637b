"""The validation metric over candidate and nodule tables (:class:`pivot_monai.metrics.cumulative.DetectionMetric`)."""

from __future__ import annotations

import logging

import pytest
import torch

from pivot_monai.metrics.cumulative import DetectionMetric


def _tables() -> tuple[torch.Tensor, torch.Tensor]:
    # one scan: a candidate 1 mm from a 10 mm nodule (hit), a far one (false positive)
    candidates = torch.tensor([[[10.0, 20.0, 31.0, 0.9, 9.0, 0.2], [80.0, 0.0, 0.0, 0.4, 5.0, 0.1]]])
    nodules = torch.tensor([[[10.0, 20.0, 30.0, 10.0, 1.0, 1.0, 0.0]]])
    return candidates, nodules


def test_detection_metrics_agree_and_log_one_froc_summary(caplog):
    values = {}
    with caplog.at_level(logging.DEBUG, logger="pivot_monai.metrics.froc"):
        for name in ("froc_score", "center_accuracy", "size_accuracy"):
            metric = DetectionMetric(name)
            metric(*_tables())
            values[name] = metric.aggregate()
    assert values == {"froc_score": pytest.approx(1.0), "center_accuracy": 1.0, "size_accuracy": 1.0}
    summaries = [r for r in caplog.records if r.getMessage().startswith("FROC:")]
    assert [r.levelno for r in summaries] == [logging.INFO, logging.DEBUG, logging.DEBUG]
