"""The validation metric over candidate and nodule tables (:class:`pivot_monai.metrics.cumulative.DetectionMetric`)."""

from __future__ import annotations

import logging

import pytest
import torch

from pivot_monai.metrics import cumulative
from pivot_monai.metrics.cumulative import DetectionMetric


def _tables() -> tuple[torch.Tensor, torch.Tensor]:
    # one scan: a candidate 1 mm from a 10 mm nodule (hit), a far one (false positive)
    candidates = torch.tensor([[[10.0, 20.0, 31.0, 0.9, 9.0, 0.2], [80.0, 0.0, 0.0, 0.4, 5.0, 0.1]]])
    nodules = torch.tensor([[[10.0, 20.0, 30.0, 10.0, 1.0, 1.0, 0.0]]])
    return candidates, nodules


def _aggregate(names, candidates, nodules) -> dict[str, float]:
    values = {}
    for name in names:
        metric = DetectionMetric(name)
        metric(candidates, nodules)
        values[name] = metric.aggregate()
    return values


@pytest.mark.parametrize("order", [("froc_score", "center_accuracy", "size_accuracy"), ("size_accuracy", "froc_score")])
def test_detection_metrics_of_one_round_share_one_froc(caplog, order):
    computed = cumulative._LAST_FROC.computed
    candidates, nodules = _tables()
    shift = 1000.0 * len(order)  # tables no earlier test left in the slot: the same scene, moved
    candidates[..., :3] += shift
    nodules[..., :3] += shift
    with caplog.at_level(logging.INFO, logger="pivot_monai.metrics.froc"):
        values = _aggregate(order, candidates, nodules)
    assert values == {name: pytest.approx(1.0) for name in order}
    assert cumulative._LAST_FROC.computed == computed + 1
    assert len([r for r in caplog.records if r.getMessage().startswith("FROC:")]) == 1


def test_changed_tables_are_matched_again():
    candidates, nodules = _tables()
    before = _aggregate(["froc_score", "center_accuracy"], candidates, nodules)
    computed = cumulative._LAST_FROC.computed
    candidates[0, 0, 2] += 40.0  # the hit moves away: now a second false positive
    after = _aggregate(["froc_score", "center_accuracy"], candidates, nodules)
    assert cumulative._LAST_FROC.computed == computed + 1
    assert before == {"froc_score": pytest.approx(1.0), "center_accuracy": 1.0}
    assert after == {"froc_score": 0.0, "center_accuracy": 0.0}
