"""Tests of pivot_monai.metrics.froc: LUNA16 FROC/CPM rules, bootstrap, submission CSV and the FROC plot."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from pivot_monai.data.annotations import Nodule
from pivot_monai.metrics import (
    LUNA16_FP_RATES,
    ScanCandidates,
    candidates_from_rows,
    compute_froc,
    plot_froc,
    read_submission_csv,
    write_submission_csv,
)


def _cands(rows: list[tuple[float, float, float, float]]) -> ScanCandidates:
    arr = np.asarray(rows, dtype=float).reshape(-1, 4)
    return ScanCandidates(arr[:, :3], arr[:, 3])


def _hand_case() -> tuple[dict, dict, dict, list[str]]:
    """3 scans, 3 nodules.

    s1: nodule A (0,0,0) d=10 (r^2=25); nodule B (50,0,0) d=6 (r^2=9); excluded E (100,0,0) d=-1 (=10 mm, r^2=25).
        c0 (0,0,0)    p=0.9  -> hits A (d^2=0): TP for A
        c1 (3,0,0)    p=0.6  -> hits A again (d^2=9): neither TP nor FP
        c2 (53,0,0)   p=0.8  -> exactly on B's radius (d^2=9, not < 9): FP, B is missed
        c3 (104,0,0)  p=0.7  -> on E (d^2=16 < 25 only because -1 means 10 mm): ignored
        c4 (200,0,0)  p=0.3  -> FP
    s2: nodule C (10,10,10) d=8 (r^2=16)
        c0 (10,10,13) p=0.4  -> hits C (d^2=9): TP for C
        c1 (-50,0,0)  p=0.5  -> FP
    s3: no nodule
        c0 p=0.95, c1 p=0.2  -> FPs
    """
    annotations = {
        "s1": [Nodule("s1", (0.0, 0.0, 0.0), 10.0), Nodule("s1", (50.0, 0.0, 0.0), 6.0)],
        "s2": [Nodule("s2", (10.0, 10.0, 10.0), 8.0)],
    }
    excluded = {"s1": [Nodule("s1", (100.0, 0.0, 0.0), -1.0)]}
    candidates = {
        "s1": _cands([(0, 0, 0, 0.9), (3, 0, 0, 0.6), (53, 0, 0, 0.8), (104, 0, 0, 0.7), (200, 0, 0, 0.3)]),
        "s2": _cands([(10, 10, 13, 0.4), (-50, 0, 0, 0.5)]),
        "s3": _cands([(0, 0, 0, 0.95), (30, 30, 30, 0.2)]),
    }
    return candidates, annotations, excluded, ["s1", "s2", "s3"]


def test_hand_case_curve_sensitivities_and_cpm():
    cands, annots, excl, uids = _hand_case()
    result = compute_froc(cands, annots, uids, excl)
    # Entries by descending probability: 0.95 FP, 0.9 TP, 0.8 FP, 0.5 FP, 0.4 TP, 0.3 FP, 0.2 FP; 3 scans, 3 nodules.
    # Curve (FP/3, TP/3): (0,0) (1/3,0) (1/3,1/3) (2/3,1/3) (1,1/3) (1,2/3) (4/3,2/3) (5/3,2/3).
    np.testing.assert_allclose(result.fps, [0, 1 / 3, 1 / 3, 2 / 3, 1, 1, 4 / 3, 5 / 3])
    np.testing.assert_allclose(result.sensitivity, [0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(result.thresholds, [np.inf, 0.95, 0.9, 0.8, 0.5, 0.4, 0.3, 0.2])
    # 1/8, 1/4 lie between (0,0) and (1/3,0) -> 0; 1/2 lies on the flat (1/3,1/3)-(2/3,1/3) -> 1/3;
    # 1 sits on the vertical step at fps=1, where np.interp takes the last (top) point -> 2/3; 2, 4, 8 are past the
    # end -> 2/3. CPM = (0 + 0 + 1/3 + 4 * 2/3) / 7 = 3/7.
    np.testing.assert_allclose(result.sensitivities, [0, 0, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert result.cpm == pytest.approx(3 / 7)
    assert (result.n_nodules, result.n_scans, result.n_detected) == (3, 3, 2)
    assert (result.n_candidates, result.n_false_positives, result.n_ignored) == (9, 5, 1)


def test_hand_case_records_hold_best_hit():
    cands, annots, excl, uids = _hand_case()
    recs = compute_froc(cands, annots, uids, excl).records
    assert [(r.seriesuid, r.nodule_index, r.hit) for r in recs] == [("s1", 0, True), ("s1", 1, False), ("s2", 0, True)]
    assert (recs[0].probability, recs[0].distance_mm, recs[0].candidate_index) == (0.9, 0.0, 0)
    assert (recs[1].probability, recs[1].distance_mm, recs[1].candidate_index) == (None, None, None)
    assert (recs[2].probability, recs[2].distance_mm, recs[2].candidate_index) == (0.4, 3.0, 0)


def test_candidate_exactly_on_radius_is_not_a_hit():
    annots = {"a": [Nodule("a", (0.0, 0.0, 0.0), 6.0)]}
    on_edge = compute_froc({"a": _cands([(0, 3, 0, 0.9)])}, annots, ["a"])
    inside = compute_froc({"a": _cands([(0, 2.999, 0, 0.9)])}, annots, ["a"])
    assert (on_edge.n_detected, on_edge.n_false_positives) == (0, 1)
    assert (inside.n_detected, inside.n_false_positives) == (1, 0)


def test_second_hit_on_a_nodule_is_neither_tp_nor_fp():
    annots = {"a": [Nodule("a", (0.0, 0.0, 0.0), 10.0)]}
    result = compute_froc({"a": _cands([(0, 0, 0, 0.3), (1, 0, 0, 0.8), (0, 1, 0, 0.5)])}, annots, ["a"])
    # One TP at the best hit's probability 0.8, no FP: every rate reads sensitivity 1.
    assert (result.n_detected, result.n_false_positives) == (1, 0)
    assert result.records[0].probability == 0.8 and result.records[0].candidate_index == 1
    np.testing.assert_allclose(result.sensitivities, 1.0)


def test_candidate_hitting_two_nodules_counts_for_both():
    annots = {"a": [Nodule("a", (0.0, 0.0, 0.0), 10.0), Nodule("a", (6.0, 0.0, 0.0), 10.0)]}
    result = compute_froc({"a": _cands([(3, 0, 0, 0.7)])}, annots, ["a"])
    assert [r.hit for r in result.records] == [True, True]
    assert (result.n_detected, result.n_false_positives, result.cpm) == (2, 0, 1.0)


def test_candidate_on_excluded_finding_is_ignored():
    annots = {"a": [Nodule("a", (0.0, 0.0, 0.0), 6.0)]}
    excl = {"a": [Nodule("a", (40.0, 0.0, 0.0), 8.0)]}
    cands = {"a": _cands([(0, 0, 0, 0.5), (41, 0, 0, 0.9)])}
    assert compute_froc(cands, annots, ["a"], excl).n_false_positives == 0
    assert compute_froc(cands, annots, ["a"], excl).n_ignored == 1
    assert compute_froc(cands, annots, ["a"]).n_false_positives == 1


def test_excluded_unknown_diameter_counts_as_10mm():
    annots = {"a": [Nodule("a", (0.0, 0.0, 0.0), 6.0)]}
    excl = {"a": [Nodule("a", (40.0, 0.0, 0.0), -1.0)]}
    # d^2 = 4.9^2 < 25 (radius 5): ignored; d^2 = 5^2 is not < 25: a FP.
    assert compute_froc({"a": _cands([(44.9, 0, 0, 0.9)])}, annots, ["a"], excl).n_false_positives == 0
    assert compute_froc({"a": _cands([(45.0, 0, 0, 0.9)])}, annots, ["a"], excl).n_false_positives == 1


def test_nodule_free_scan_counts_in_fp_denominator():
    annots = {"a": [Nodule("a", (0.0, 0.0, 0.0), 6.0)]}
    cands = {"a": _cands([(0, 0, 0, 0.5)]), "b": _cands([(0, 0, 0, 0.9), (9, 9, 9, 0.8)])}
    result = compute_froc(cands, annots, ["a", "b", "c"])
    # 2 FPs above the only TP, over 3 scans -> the TP appears at 2/3 FP/scan: sens 0 at 1/8..1/2, 1 from 1 on.
    np.testing.assert_allclose(result.fps[-1], 2 / 3)
    np.testing.assert_allclose(result.sensitivities, [0, 0, 0, 1, 1, 1, 1])


def test_more_than_100_candidates_keeps_the_most_probable():
    annots = {"a": [Nodule("a", (0.0, 0.0, 0.0), 6.0)]}
    far = np.column_stack([np.arange(150) * 20.0 + 100.0, np.zeros(150), np.zeros(150)])
    world = np.vstack([far, [[0.0, 0.0, 0.0]]])
    prob = np.r_[np.linspace(0.99, 0.5, 150), 0.4]  # the true hit ranks 151st
    result = compute_froc({"a": ScanCandidates(world, prob)}, annots, ["a"])
    assert (result.n_candidates, result.n_false_positives, result.n_detected) == (100, 100, 0)
    unlimited = compute_froc({"a": ScanCandidates(world, prob)}, annots, ["a"], max_candidates_per_scan=None)
    assert (unlimited.n_candidates, unlimited.n_detected) == (151, 1)


def test_truncation_drops_ties_at_the_cut_like_official_script():
    # Official rule: keep probability > the (K+1)-th highest, so 3 candidates tied at the cut are all dropped.
    cands = {"a": _cands([(0, 0, 0, 0.9), (9, 0, 0, 0.5), (19, 0, 0, 0.5), (29, 0, 0, 0.5)])}
    assert compute_froc(cands, {}, ["a"], max_candidates_per_scan=2).n_candidates == 1


def test_zero_nodules_gives_nan_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="pivot_monai.metrics.froc"):
        result = compute_froc({"a": _cands([(0, 0, 0, 0.9)])}, {}, ["a", "b"], bootstrap=10)
    assert np.isnan(result.sensitivities).all() and math.isnan(result.cpm) and result.ci is None
    assert "no true nodule" in caplog.text


def test_no_candidates_gives_zero_sensitivity():
    annots = {"a": [Nodule("a", (0.0, 0.0, 0.0), 6.0)]}
    result = compute_froc({}, annots, ["a", "b"])
    np.testing.assert_array_equal(result.sensitivities, 0.0)
    assert result.cpm == 0.0


def test_candidates_for_unknown_scan_raise_naming_it():
    with pytest.raises(ValueError, match="ghost"):
        compute_froc({"ghost": _cands([(0, 0, 0, 0.5)])}, {}, ["a"])


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="seriesuids"):
        compute_froc({}, {}, [])
    with pytest.raises(ValueError, match="unique"):
        compute_froc({}, {}, ["a", "a"])
    with pytest.raises(ValueError, match="fp_rates"):
        compute_froc({}, {}, ["a"], fp_rates=[0.0, 1.0])
    with pytest.raises(ValueError, match="bootstrap"):
        compute_froc({}, {}, ["a"], bootstrap=-1)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        ScanCandidates(np.zeros((2, 2)), np.zeros(2))


# --- an independent, deliberately naive implementation, mirroring the official script's loops ----------------------


def _naive_froc(cands, annots, excl, uids, limit, rates):
    tp_probs, fp_probs, n_nodules = [], [], 0
    for uid in uids:
        marks = cands.get(uid, [])
        if limit and len(marks) > limit:
            cut = sorted((m[3] for m in marks), reverse=True)[limit]
            marks = [m for m in marks if m[3] > cut]
        left = list(range(len(marks)))
        findings = [(n, True) for n in annots.get(uid, [])] + [(n, False) for n in excl.get(uid, [])]
        for finding, included in findings:
            diameter = finding.diameter_mm if finding.diameter_mm >= 0 else 10.0
            found = []
            for j, mark in enumerate(marks):
                d2 = 0.0
                for a, b in zip(finding.world, mark[:3]):
                    d2 = d2 + (a - b) * (a - b)
                if d2 < (diameter / 2.0) ** 2:
                    if included:
                        found.append(mark[3])
                    if j in left:
                        left.remove(j)
            if included:
                n_nodules += 1
                if found:
                    tp_probs.append(max(found))
        fp_probs.extend(marks[j][3] for j in left)
    if n_nodules == 0:
        return [math.nan] * len(rates), math.nan
    xs, ys = [0.0], [0.0]
    for t in sorted(set(tp_probs + fp_probs), reverse=True):
        xs.append(len([p for p in fp_probs if p >= t]) / len(uids))
        ys.append(len([p for p in tp_probs if p >= t]) / n_nodules)
    sens = [float(np.interp(r, xs, ys)) for r in rates]
    return sens, sum(sens) / len(sens)


def _random_case(rng: np.random.Generator):
    uids = [f"scan{i}" for i in range(int(rng.integers(1, 7)))]
    annots, excl, cands = {}, {}, {}
    for uid in uids:
        nods = []
        for _ in range(int(rng.integers(0, 4))):
            centre = tuple(float(v) for v in np.round(rng.uniform(-60, 60, 3) * 2) / 2)
            nods.append(Nodule(uid, centre, float(rng.choice([3.0, 4.0, 6.0, 8.0, 10.0, 12.5]))))
            if rng.random() < 0.2:  # an overlapping neighbour
                nods.append(Nodule(uid, (centre[0] + 4.0, centre[1], centre[2]), 8.0))
        ex = [
            Nodule(
                uid,
                tuple(float(v) for v in np.round(rng.uniform(-60, 60, 3))),
                -1.0 if rng.random() < 0.5 else float(rng.choice([4.0, 7.0])),
            )
            for _ in range(int(rng.integers(0, 3)))
        ]
        marks = []
        for _ in range(int(rng.integers(0, 16))):
            kind = rng.random()
            targets = nods + ex
            if targets and kind < 0.6:
                t = targets[int(rng.integers(len(targets)))]
                r = (t.diameter_mm if t.diameter_mm > 0 else 10.0) / 2.0
                if rng.random() < 0.25:  # exactly on the boundary along one axis
                    axis = int(rng.integers(3))
                    xyz = list(t.world)
                    xyz[axis] += r
                else:
                    xyz = list(np.asarray(t.world) + rng.uniform(-1.2, 1.2, 3) * r / math.sqrt(3))
            else:
                xyz = list(rng.uniform(-70, 70, 3))
            p = float(rng.random())
            marks.append((*(float(v) for v in xyz), round(p, 1) if rng.random() < 0.5 else p))
        if nods:
            annots[uid] = nods
        if ex:
            excl[uid] = ex
        if marks or rng.random() < 0.5:
            cands[uid] = marks
    return uids, annots, excl, cands


def test_compute_froc_matches_naive_implementation_on_random_cases():
    rng = np.random.default_rng(1234)
    compared = 0
    for _ in range(50):
        uids, annots, excl, marks = _random_case(rng)
        limit = [100, 5, 3, None][int(rng.integers(4))]
        cands = {u: _cands(m) for u, m in marks.items()}
        result = compute_froc(cands, annots, uids, excl, max_candidates_per_scan=limit)
        sens, cpm = _naive_froc(marks, annots, excl, uids, limit, LUNA16_FP_RATES)
        np.testing.assert_allclose(result.sensitivities, sens, equal_nan=True, atol=1e-12)
        np.testing.assert_allclose(result.cpm, cpm, equal_nan=True, atol=1e-12)
        compared += result.n_nodules > 0
    assert compared >= 40  # most cases carry nodules


# --- bootstrap ----------------------------------------------------------------------------------------------------


def _bootstrap_case():
    rng = np.random.default_rng(7)
    uids = [f"s{i}" for i in range(30)]
    annots, cands = {}, {}
    for i, uid in enumerate(uids):
        nods = [Nodule(uid, (float(k * 40), 0.0, 0.0), 8.0) for k in range(i % 3)]
        annots[uid] = nods
        rows = [(n.world[0] + 1.0, 0.0, 0.0, float(rng.uniform(0.3, 1.0))) for n in nods if rng.random() < 0.8]
        rows += [(float(rng.uniform(200, 400)), 50.0, 0.0, float(rng.uniform(0.0, 0.9))) for _ in range(3)]
        cands[uid] = _cands(rows)
    return cands, annots, uids


def test_bootstrap_ci_contains_point_estimate():
    cands, annots, uids = _bootstrap_case()
    result = compute_froc(cands, annots, uids, bootstrap=200, seed=3)
    ci = result.ci
    assert ci["n_bootstrap"] == 200 and ci["n_valid"] == 200
    assert ci["cpm_lower"] <= result.cpm <= ci["cpm_upper"]
    assert np.all(np.asarray(ci["sensitivity_lower"]) <= result.sensitivities + 1e-12)
    assert np.all(result.sensitivities <= np.asarray(ci["sensitivity_upper"]) + 1e-12)
    assert ci["cpm_lower"] < ci["cpm_upper"]


def test_bootstrap_is_reproducible_with_the_same_seed():
    cands, annots, uids = _bootstrap_case()
    a = compute_froc(cands, annots, uids, bootstrap=50, seed=11).ci
    b = compute_froc(cands, annots, uids, bootstrap=50, seed=11).ci
    c = compute_froc(cands, annots, uids, bootstrap=50, seed=12).ci
    assert a == b
    assert a != c


def test_to_dict_is_strict_json():
    cands, annots, uids = _bootstrap_case()
    data = compute_froc(cands, annots, uids, bootstrap=5).to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["cpm"] == pytest.approx(data["cpm"])
    nan_data = compute_froc({}, {}, ["a"]).to_dict()
    assert nan_data["cpm"] is None and json.dumps(nan_data, allow_nan=False)


# --- submission CSV -------------------------------------------------------------------------------------------------


def test_submission_csv_round_trip(tmp_path):
    cands = {
        "1.2.3": ScanCandidates(
            [[-101.25, 33.3333333333, 1e-7], [0.1 + 0.2, -0.0, 250.0]],
            [1e-20, 0.75],
            diameter_mm=[5.5, np.nan],
            malignancy=[0.2, 0.9],
        ),
        "4.5.6": ScanCandidates([[1.0, 2.0, 3.0]], [0.5]),
    }
    path = write_submission_csv(tmp_path / "sub.csv", cands)
    lines = path.read_text().splitlines()
    assert lines[0] == "seriesuid,coordX,coordY,coordZ,probability,diameter_mm,malignancy_probability"
    assert "e" not in "".join(line.split(",", 1)[1] for line in lines[1:])  # plain decimals, no exponent
    back = read_submission_csv(path)
    assert list(back) == ["1.2.3", "4.5.6"]
    np.testing.assert_array_equal(back["1.2.3"].world, cands["1.2.3"].world)
    np.testing.assert_array_equal(back["1.2.3"].probability, cands["1.2.3"].probability)
    np.testing.assert_array_equal(back["1.2.3"].diameter_mm, [5.5, np.nan])
    np.testing.assert_array_equal(back["1.2.3"].malignancy, [0.2, 0.9])
    assert back["4.5.6"].diameter_mm is None and back["4.5.6"].malignancy is None


def test_submission_csv_without_optional_columns_has_official_header(tmp_path):
    path = write_submission_csv(tmp_path / "sub.csv", {"a": _cands([(1, 2, 3, 0.5)])})
    assert path.read_text().splitlines() == ["seriesuid,coordX,coordY,coordZ,probability", "a,1.0,2.0,3.0,0.5"]


def test_read_submission_csv_reports_bad_values(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,probability\na,1,2,3,0.5\na,1,x,3,0.5\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: column 'coordY'"):
        read_submission_csv(path)
    path.write_text("seriesuid,coordX,coordY,probability\n")
    with pytest.raises(ValueError, match="coordZ"):
        read_submission_csv(path)


def test_candidates_from_rows_groups_by_scan():
    rows = [
        {"seriesuid": "a", "coordX": "1", "coordY": 2, "coordZ": 3.0, "probability": "0.9"},
        {"seriesuid": "b", "coordX": 0, "coordY": 0, "coordZ": 0, "probability": 0.1},
        {"seriesuid": "a", "coordX": 4, "coordY": 5, "coordZ": 6, "probability": 0.2},
    ]
    out = candidates_from_rows(rows)
    np.testing.assert_array_equal(out["a"].world, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(out["a"].probability, [0.9, 0.2])
    assert len(out["b"]) == 1
    with pytest.raises(ValueError, match="row 0"):
        candidates_from_rows([{"seriesuid": "a", "coordX": 1}])


# --- plot -----------------------------------------------------------------------------------------------------------


def test_plot_froc_writes_png_with_and_without_ci(tmp_path):
    cands, annots, uids = _bootstrap_case()
    for name, boot in (("ci.png", 20), ("plain.png", 0)):
        path = plot_froc(compute_froc(cands, annots, uids, bootstrap=boot), tmp_path / name, title="test")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = plot_froc(compute_froc({}, {}, ["a"]), tmp_path / "sub" / "empty.png")
    assert empty.exists()
