"""Tests of pivot_monai.metrics.detection: matching records and the per-nodule metrics."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from pivot_monai.data.annotations import Nodule
from pivot_monai.metrics import (
    NoduleMatch,
    ScanCandidates,
    center_accuracy,
    compute_froc,
    detection_dice,
    malignancy_auc,
    match_candidates,
    mean_center_distance,
    roc_auc,
    size_accuracy,
    size_mae,
    summarize_detection,
)


def _match(
    hit: bool = True,
    probability: float = 0.9,
    distance: float = 1.0,
    diameter: float = 10.0,
    malignancy: float | None = None,
    pred_diameter: float | None = None,
    pred_malignancy: float | None = None,
) -> NoduleMatch:
    if not hit:
        return NoduleMatch("s", 0, False, None, None, None, diameter, malignancy)
    return NoduleMatch("s", 0, True, probability, distance, 0, diameter, malignancy, pred_diameter, pred_malignancy)


def test_match_candidates_takes_highest_probability_hit_and_its_predictions():
    annots = {"a": [Nodule("a", (0.0, 0.0, 0.0), 10.0, 5.0), Nodule("a", (60.0, 0.0, 0.0), 6.0)]}
    cands = {
        "a": ScanCandidates(
            [[1.0, 0.0, 0.0], [0.0, 4.0, 0.0], [90.0, 0.0, 0.0]],
            [0.6, 0.8, 0.99],
            diameter_mm=[9.0, 12.0, 3.0],
            malignancy=[0.1, 0.7, 0.5],
        )
    }
    first, second = match_candidates(cands, annots)
    assert (first.hit, first.probability, first.candidate_index, first.distance_mm) == (True, 0.8, 1, 4.0)
    assert (first.predicted_diameter_mm, first.predicted_malignancy, first.malignancy) == (12.0, 0.7, 5.0)
    assert not second.hit and second.predicted_diameter_mm is None


def test_match_candidates_agrees_with_froc_records():
    annots = {"a": [Nodule("a", (0.0, 0.0, 0.0), 10.0)], "b": [Nodule("b", (5.0, 5.0, 5.0), 4.0)]}
    cands = {"a": ScanCandidates([[1.0, 1.0, 1.0]], [0.4]), "b": ScanCandidates([[30.0, 0.0, 0.0]], [0.9])}
    assert match_candidates(cands, annots, ["a", "b"]) == compute_froc(cands, annots, ["a", "b"]).records


def test_center_accuracy_hand_case():
    matches = [
        _match(probability=0.9, distance=1.0),
        _match(probability=0.3, distance=4.0),
        _match(probability=0.6, distance=3.0),
        _match(hit=False),
    ]
    # Any hit: 3 of 4 nodules. Threshold 0.5: the 0.9 and 0.6 hits -> 2/4. Half the radius (2.5 mm): distances 1.0
    # only (4.0 and 3.0 are beyond) -> 1/4.
    assert center_accuracy(matches) == 0.75
    assert center_accuracy(matches, threshold=0.5) == 0.5
    assert center_accuracy(matches, radius_fraction=0.5) == 0.25
    with pytest.raises(ValueError, match="radius_fraction"):
        center_accuracy(matches, radius_fraction=0.0)
    assert math.isnan(center_accuracy([]))


def test_mean_center_distance_over_hits():
    matches = [_match(probability=0.9, distance=1.0), _match(probability=0.3, distance=4.0), _match(hit=False)]
    assert mean_center_distance(matches) == 2.5  # (1 + 4) / 2
    assert mean_center_distance(matches, threshold=0.5) == 1.0
    assert math.isnan(mean_center_distance([_match(hit=False)]))


def test_size_mae_and_accuracy_hand_case():
    matches = [
        _match(diameter=10.0, pred_diameter=12.0),  # error 2, relative 0.2 -> within 25 %
        _match(diameter=8.0, pred_diameter=11.0),  # error 3, relative 0.375 -> outside
        _match(diameter=8.0, pred_diameter=10.0),  # error 2, relative exactly 0.25 -> within (<=)
        _match(diameter=6.0, pred_diameter=None),  # no prediction: skipped
        _match(hit=False, diameter=5.0),
    ]  # missed: skipped
    assert size_mae(matches) == pytest.approx(7 / 3)  # (2 + 3 + 2) / 3
    assert size_accuracy(matches) == pytest.approx(2 / 3)
    assert size_accuracy(matches, tolerance=0.5) == 1.0
    assert math.isnan(size_mae([_match(pred_diameter=None)]))
    with pytest.raises(ValueError, match="tolerance"):
        size_accuracy(matches, tolerance=-0.1)


def test_roc_auc_hand_case():
    # Positives 0.9, 0.4 vs negatives 0.5, 0.1: pairs won 0.9>0.5, 0.9>0.1, 0.4>0.1, lost 0.4<0.5 -> 3/4.
    # Ranks 0.1:1 0.4:2 0.5:3 0.9:4; (R_pos - 3) / 4 = (6 - 3) / 4.
    assert roc_auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == 0.75


def test_roc_auc_averages_ties():
    # Positives 0.5, 0.8 vs negatives 0.5, 0.2: the 0.5-0.5 tie counts 1/2 -> (0.5 + 1 + 1 + 1) / 4 = 0.875.
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.8, 0.2]) == 0.875
    assert roc_auc([1, 0, 1, 0], [0.3] * 4) == 0.5


def test_roc_auc_matches_pairwise_count_on_random_ties():
    rng = np.random.default_rng(5)
    for _ in range(20):
        labels = rng.random(15) < 0.4
        scores = np.round(rng.random(15), 1)
        if labels.all() or not labels.any():
            continue
        pos, neg = scores[labels], scores[~labels]
        expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])
        assert roc_auc(labels, scores) == pytest.approx(expected)


def test_roc_auc_one_class_is_nan_and_bad_input_raises():
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))
    with pytest.raises(ValueError, match="scores"):
        roc_auc([1, 0], [0.2])


def test_malignancy_auc_uses_rated_hits_with_predictions():
    matches = [
        _match(malignancy=5.0, pred_malignancy=0.9),
        _match(malignancy=4.0, pred_malignancy=0.3),
        _match(malignancy=2.0, pred_malignancy=0.4),
        _match(malignancy=1.0, pred_malignancy=0.1),
        _match(malignancy=None, pred_malignancy=0.99),  # unrated: skipped
        _match(hit=False, malignancy=5.0),
    ]  # missed: skipped
    # Labels rating >= 4: [1, 1, 0, 0] with scores [0.9, 0.3, 0.4, 0.1] -> 3/4.
    assert malignancy_auc(matches) == 0.75
    # rating >= 5: positive 0.9 beats all three negatives -> 1.0.
    assert malignancy_auc(matches, rating_threshold=5.0) == 1.0
    assert math.isnan(malignancy_auc(matches[:1]))


def test_detection_dice_cases():
    empty = np.zeros((2, 3, 4), dtype=bool)
    assert detection_dice(empty, empty) == 1.0
    one = empty.copy()
    one[0, 0, 0] = True
    assert detection_dice(one, empty) == 0.0
    pred = empty.copy()
    pred[0, 0, :] = True  # 4 voxels
    true = empty.copy()
    true[0, 0, :2] = True  # 2 voxels, both inside pred
    assert detection_dice(pred, true) == pytest.approx(2 * 2 / 6)
    assert detection_dice(pred.astype(np.uint8) * 3, pred) == 1.0
    with pytest.raises(ValueError, match="shape"):
        detection_dice(pred, true[0])


def test_summarize_detection_is_json_ready():
    annots = {"a": [Nodule("a", (0.0, 0.0, 0.0), 10.0, 5.0), Nodule("a", (50.0, 0.0, 0.0), 8.0, 1.0)]}
    cands = {
        "a": ScanCandidates(
            [[1.0, 0.0, 0.0], [50.0, 2.0, 0.0], [99.0, 0.0, 0.0]],
            [0.9, 0.6, 0.7],
            diameter_mm=[11.0, 8.0, 5.0],
            malignancy=[0.8, 0.2, 0.5],
        )
    }
    result = compute_froc(cands, annots, ["a", "b"], bootstrap=10)
    summary = summarize_detection(result)
    json.dumps(summary, allow_nan=False)
    assert summary["cpm"] == pytest.approx(result.cpm)
    assert summary["sensitivity@0.125"] == pytest.approx(result.sensitivities[0])
    assert (summary["n_nodules"], summary["n_detected"], summary["fp_per_scan"]) == (2, 2, 0.5)
    assert summary["center_accuracy"] == 1.0 and summary["mean_center_distance_mm"] == 1.5
    assert summary["size_mae_mm"] == 0.5 and summary["size_accuracy"] == 1.0
    assert summary["malignancy_auc"] == 1.0 and len(summary["cpm_ci"]) == 2
    assert summarize_detection(result, threshold=0.8)["center_accuracy"] == 0.5
