"""The validation metric over candidate and nodule tables (:class:`pivot_monai.metrics.cumulative.DetectionMetric`)."""

from __future__ import annotations

import logging

import pytest
import torch

from pivot_monai.handlers.validation import build_validation_metrics
from pivot_monai.metrics.cumulative import DetectionMetric, FROCCache


def _tables() -> tuple[torch.Tensor, torch.Tensor]:
    # one scan: a candidate 1 mm from a 10 mm nodule (hit), a far one (false positive)
    candidates = torch.tensor([[[10.0, 20.0, 31.0, 0.9, 9.0, 0.2], [80.0, 0.0, 0.0, 0.4, 5.0, 0.1]]])
    nodules = torch.tensor([[[10.0, 20.0, 30.0, 10.0, 1.0, 1.0, 0.0]]])
    return candidates, nodules


def _aggregate(names, candidates, nodules, cache: FROCCache) -> dict[str, float]:
    values = {}
    for name in names:
        metric = DetectionMetric(name, froc_cache=cache)
        metric(candidates, nodules)
        values[name] = metric.aggregate()
    return values


@pytest.mark.parametrize("order", [("froc_score", "center_accuracy", "size_accuracy"), ("size_accuracy", "froc_score")])
def test_detection_metrics_of_one_round_share_one_froc(caplog, order):
    cache = FROCCache()
    with caplog.at_level(logging.INFO, logger="pivot_monai.metrics.froc"):
        values = _aggregate(order, *_tables(), cache)
    assert values == {name: pytest.approx(1.0) for name in order}
    assert cache.computed == 1
    assert len([r for r in caplog.records if r.getMessage().startswith("FROC:")]) == 1


def test_changed_tables_are_matched_again():
    candidates, nodules = _tables()
    cache = FROCCache()
    before = _aggregate(["froc_score", "center_accuracy"], candidates, nodules, cache)
    candidates[0, 0, 2] += 40.0  # the hit moves away: now a second false positive
    after = _aggregate(["froc_score", "center_accuracy"], candidates, nodules, cache)
    assert cache.computed == 2
    assert before == {"froc_score": pytest.approx(1.0), "center_accuracy": 1.0}
    assert after == {"froc_score": 0.0, "center_accuracy": 0.0}


def test_validation_metrics_of_one_evaluator_share_a_cache():
    key, others = build_validation_metrics(["froc_score", "center_accuracy", "size_accuracy"])
    caches = {id(h.metric_fn.froc_cache) for h in [*key.values(), *others.values()]}
    assert len(caches) == 1
    assert (
        build_validation_metrics(["froc_score"])[0]["val_froc"].metric_fn.froc_cache
        is not next(iter(key.values())).metric_fn.froc_cache
    )
