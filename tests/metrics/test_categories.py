"""Per-category sensitivities and FP/scan operating points of a FROC result."""

from __future__ import annotations

import math

import pytest

from pivot_monai.data.annotations import Nodule
from pivot_monai.metrics.categories import (
    category_sensitivities,
    format_category_table,
    fp_per_scan_at_sensitivity,
    size_bin,
    threshold_at_fp_rate,
)
from pivot_monai.metrics.froc import ScanCandidates, compute_froc


@pytest.fixture()
def froc():
    """Two scans, three nodules (4, 8 and 12 mm); hits at 0.9 and 0.4, the 12 mm one missed; FPs at 0.8, 0.3, 0.2."""
    truth = {
        "a": [Nodule("a", (0.0, 0.0, 0.0), 4.0), Nodule("a", (50.0, 0.0, 0.0), 8.0)],
        "b": [Nodule("b", (0.0, 0.0, 0.0), 12.0)],
    }
    cands = {
        "a": ScanCandidates([[0, 0, 0], [50, 0, 0], [90, 90, 90]], [0.9, 0.4, 0.8]),
        "b": ScanCandidates([[80, 80, 80], [-80, 80, 80]], [0.3, 0.2]),
    }
    return compute_froc(cands, truth, ["a", "b"])


def test_size_bins_follow_luna16_breakdown():
    assert [size_bin(d) for d in (3.0, 5.99, 6.0, 9.9, 10.0, 30.0)] == [
        "<6 mm", "<6 mm", "6-10 mm", "6-10 mm", ">=10 mm", ">=10 mm"
    ]  # fmt: skip


def test_fp_per_scan_at_sensitivity_reads_the_curve(froc):
    # sorted entries: 0.9 TP, 0.8 FP, 0.4 TP, 0.3 FP, 0.2 FP -> 1/3 at 0 FP, 2/3 at 0.5 FP/scan, never 1
    assert fp_per_scan_at_sensitivity(froc, 1 / 3) == 0.0
    assert fp_per_scan_at_sensitivity(froc, 0.6) == pytest.approx(0.5)
    assert math.isinf(fp_per_scan_at_sensitivity(froc, 0.9))


def test_threshold_at_fp_rate_is_the_lowest_score_within_the_budget(froc):
    assert threshold_at_fp_rate(froc, 0.0) == pytest.approx(0.9)
    assert threshold_at_fp_rate(froc, 0.5) == pytest.approx(0.4)
    assert threshold_at_fp_rate(froc, 5.0) == pytest.approx(0.2)


def test_category_sensitivities_at_an_operating_point(froc):
    cats = {("a", 0): {"type": "GGO"}, ("a", 1): {"type": "solid"}, ("b", 0): {"type": "solid"}}
    rows = category_sensitivities(froc, cats, fp_per_scan=0.0, bootstrap=0)
    by = {(r["group"], r["category"]): r for r in rows}
    assert by[("size", "<6 mm")]["sensitivity"] == 1.0  # the 0.9 hit survives at 0 FP/scan
    assert by[("size", "6-10 mm")]["sensitivity"] == 0.0 and by[("size", "6-10 mm")]["detected"] == 1.0
    assert by[("type", "solid")]["n"] == 2 and by[("type", "solid")]["sensitivity"] == 0.0
    assert [r["group"] for r in rows] == ["size"] * 3 + ["type"] * 2  # size first, then type
    at_half = {(r["group"], r["category"]): r for r in category_sensitivities(froc, cats, fp_per_scan=0.5)}
    assert at_half[("type", "solid")]["sensitivity"] == 0.5
    assert at_half[("type", "solid")]["ci"] is not None


def test_category_table_formats_every_row(froc):
    rows = category_sensitivities(froc, {}, bootstrap=0)
    text = format_category_table(rows, "title")
    assert text.splitlines()[0] == "title" and len(text.splitlines()) == 2 + len(rows)
