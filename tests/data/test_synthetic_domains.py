"""Synthetic generator domains, pathology background, scanner kernels and the realism report."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from pivot_monai.data.synthetic import generate_dataset, scan_rng, synthesize_scan
from pivot_monai.data.synthetic.chest_sampling import sample_chest_model
from pivot_monai.data.synthetic.domains import DOMAINS, draw, get_domain
from pivot_monai.data.synthetic.nodules import sample_findings
from pivot_monai.data.synthetic.pathology import emphysema_tubes, scar_tubes
from pivot_monai.data.synthetic.raster import RenderGrid, TubeSet
from pivot_monai.data.synthetic.realism import REFERENCES, realism_report, scan_statistics, vessel_volumes
from pivot_monai.data.synthetic.scanner import apply_scanner

DISJOINT = ("noise_hu", "sharpness", "vessel_density", "fat_mm", "lung_hu")


def _bands(value):
    return value if isinstance(value[0], tuple) else (value,)


def _overlap(a, b) -> bool:
    return any(lo1 < hi2 and lo2 < hi1 for lo1, hi1 in _bands(a) for lo2, hi2 in _bands(b))


@pytest.mark.parametrize("axis", [*DISJOINT, "ggo_hu"])
def test_heldout_domain_is_disjoint_from_training(axis):
    assert not _overlap(getattr(DOMAINS["train"], axis), getattr(DOMAINS["heldout"], axis))


def test_unknown_domain_is_a_clear_error():
    with pytest.raises(ValueError, match="synthetic domain must be one of \\['heldout', 'train'\\], got 'test'"):
        get_domain("test")
    with pytest.raises(ValueError, match="domain"):
        synthesize_scan(0, "small", domain="test")


def test_draw_stays_in_its_bands(rng):
    bands = ((-760.0, -650.0), (-350.0, -250.0))
    values = [draw(rng, bands) for _ in range(400)]
    assert all(-760 <= v <= -650 or -350 <= v <= -250 for v in values)
    assert min(values) < -650 and max(values) > -350  # both bands are used


def test_domains_change_scans_but_each_is_deterministic():
    train_a = synthesize_scan(scan_rng(3, 0), "small", domain="train")
    train_b = synthesize_scan(scan_rng(3, 0), "small", domain="train")
    held = synthesize_scan(scan_rng(3, 0), "small", domain="heldout")
    assert np.array_equal(train_a.array, train_b.array)
    assert train_a.info["domain"] == "train" and held.info["domain"] == "heldout"
    assert not np.array_equal(train_a.array, held.array)
    assert any(lo <= held.info["noise_hu"] <= hi for lo, hi in DOMAINS["heldout"].noise_hu)
    assert any(lo <= held.info["sharpness"] <= hi for lo, hi in DOMAINS["heldout"].sharpness)


# the real-CT range of each axis (lung noise of clinical to low-dose protocols, soft to sharp lung kernels, ...)
# (lung_hu is the parenchyma before vessels: the range that puts mean lung density and Perc15 in their real ranges)
REAL_RANGE = {"noise_hu": (10.0, 50.0), "sharpness": (0.0, 1.0), "vessel_density": (0.8, 1.4), "fat_mm": (3.0, 24.0),
              "lung_hu": (-905.0, -860.0), "ggo_hu": (-700.0, -300.0)}  # fmt: skip


@pytest.mark.parametrize("axis", [*DISJOINT, "ggo_hu"])
def test_training_domain_spans_the_real_range_and_heldout_reaches_beyond_it(axis):
    train, held = _bands(getattr(DOMAINS["train"], axis)), _bands(getattr(DOMAINS["heldout"], axis))
    lo, hi = REAL_RANGE[axis]
    assert min(b[0] for b in train) <= lo and max(b[1] for b in train) >= hi  # no real-CT look is left out
    # each held-out axis has a band between training bands and one beyond the training range
    inside = [b for b in held if min(t[0] for t in train) <= b[0] and b[1] <= max(t[1] for t in train)]
    beyond = [b for b in held if b[1] <= min(t[0] for t in train) or b[0] >= max(t[1] for t in train)]
    assert inside and beyond


def test_heldout_ground_glass_stays_in_its_bands_and_reaches_both_far_ends(rng):
    kinds = [s for _ in range(300) for s in sample_findings(rng, DOMAINS["heldout"]) if s.kind == "ground-glass"]
    assert kinds
    bands = DOMAINS["heldout"].ggo_hu
    assert all(any(lo <= s.hu <= hi for lo, hi in bands) for s in kinds)
    assert any(s.hu < -700 for s in kinds) and any(s.hu > -300 for s in kinds)  # beyond the real -700..-300 range


def test_placements_include_perifissural_and_juxtavascular(rng):
    counts = Counter(s.placement for _ in range(300) for s in sample_findings(rng) if not s.excluded)
    assert set(counts) == {"isolated", "juxtapleural", "juxtavascular", "perifissural"}


def test_some_tiny_excluded_findings_are_calcified_granulomas(rng):
    excluded = [s for _ in range(400) for s in sample_findings(rng) if s.excluded]
    calcified = [s for s in excluded if s.kind == "calcified"]
    assert 0.2 < len(calcified) / len(excluded) < 0.5
    assert all(s.hu >= 300 for s in calcified)


def test_oblique_fissure_points_have_zero_distance(rng):
    model = sample_chest_model(rng)
    fis = model.fissures[0]
    x, y = np.array([model.mx - 0.5 * model.cav_a]), np.array([0.0])
    slope = (fis.z_post - fis.z_ant) / (model.cav_b + model.cav_b_post)
    lateral = np.clip(-(x - model.mx) / model.cav_a, 0, 1)
    z = fis.z_ant + slope * (y + model.cav_b) + fis.curve * (1 - (2 * lateral - 1) ** 2)
    assert model.fissure_distance(np.c_[x, y, z])[0] < 1e-6
    assert model.fissure_distance(np.c_[x, y, z + 5.0])[0] == pytest.approx(5.0 / np.sqrt(1 + slope**2), abs=1e-6)


def test_perifissural_proposals_touch_a_fissure(rng):
    from pivot_monai.data.synthetic.nodules import sample_nodule
    from pivot_monai.data.synthetic.placement import _propose
    from pivot_monai.data.synthetic.vessels import sample_lung_points

    model = sample_chest_model(rng)
    cand = np.concatenate([sample_lung_points(rng, model, side, 4000, margin=1.0) for side in (0, 1)])
    sd, fd = model.lung_sd(cand)[0], model.fissure_distance(cand)
    spec = sample_nodule(rng, 6.0)
    centres = [_propose(rng, "perifissural", spec, model, cand, sd, fd, TubeSet.empty()) for _ in range(20)]
    centres = np.array([c for c in centres if c is not None])
    assert len(centres) > 0
    assert np.all(np.abs(model.fissure_distance(centres) - spec.radius) < 1.0)


def test_emphysema_holes_stay_inside_the_lungs():
    rng = np.random.default_rng(0)
    domain = DOMAINS["heldout"]
    for _ in range(10):
        model = sample_chest_model(rng, domain)
        holes = emphysema_tubes(rng, model, domain)
        if len(holes):
            assert np.all(model.lung_sd(holes.a)[0] > holes.ra)
            return
    pytest.fail("no emphysema drawn in 10 held-out chests (probability 0.5)")


def test_scars_are_short_soft_tissue_bands(rng):
    model = sample_chest_model(rng)
    scars = scar_tubes(rng, model, DOMAINS["heldout"], soft_tissue=40.0)
    if len(scars):
        assert np.all(scars.value <= 40.0) and np.all(scars.ra <= 1.4)


@pytest.mark.parametrize("sharpness", [0.0, 1.0])
def test_scanner_noise_matches_its_target_with_any_kernel(sharpness):
    grid = RenderGrid(np.zeros(3), np.array([0.7, 0.7, 1.25]), (64, 64, 48), 1.25)
    hu = np.full(grid.shape, -850.0, dtype=np.float32)
    out = apply_scanner(hu, grid, np.random.default_rng(1), psf_mm=0.6, noise_hu=40.0, sharpness=sharpness)
    assert out[8:-8, 8:-8, 8:-8].std() == pytest.approx(40.0, rel=0.1)


def test_sharp_kernel_overshoots_at_edges():
    grid = RenderGrid(np.zeros(3), np.array([0.7, 0.7, 1.25]), (64, 16, 8), 1.25)
    hu = np.full(grid.shape, -900.0, dtype=np.float32)
    hu[32:] = 40.0
    soft = apply_scanner(hu.copy(), grid, np.random.default_rng(1), 0.6, 0.1, sharpness=0.0)
    sharp = apply_scanner(hu.copy(), grid, np.random.default_rng(1), 0.6, 0.1, sharpness=1.0)
    assert soft[:, 8, 4].max() <= 41 and sharp[:, 8, 4].max() > 60  # overshoot above the tissue value
    assert sharp[:, 8, 4].min() < -920  # and undershoot below the lung


def test_vessel_volumes_split_at_five_square_mm():
    thin = TubeSet(np.zeros((1, 3)), np.array([[10.0, 0, 0]]), np.array([1.0]), np.array([1.0]), np.zeros(1))
    thick = TubeSet(np.zeros((1, 3)), np.array([[10.0, 0, 0]]), np.array([2.0]), np.array([2.0]), np.zeros(1))
    tbv, bv5 = vessel_volumes(thin.concat(thick))
    assert tbv == pytest.approx(np.pi * 10 * (1 + 4) / 1000)
    assert bv5 == pytest.approx(np.pi * 10 / 1000)


def test_realism_report_prints_every_statistic_with_its_source(tmp_path):
    generate_dataset(tmp_path, 2, seed=4, size="small", report=True, workers=2)
    rows = json.loads((tmp_path / "realism.json").read_text())
    assert [r["key"] for r in rows] == [r.key for r in REFERENCES]
    text = (tmp_path / "realism.txt").read_text()
    for ref in REFERENCES:
        assert ref.label in text and ref.source in text
    for row in rows:
        lo, hi, v = row["low"], row["high"], row["value"]
        assert row["inside"] == ((lo is None or v >= lo) and (hi is None or v <= hi))


def test_workers_do_not_change_the_files(tmp_path):
    generate_dataset(tmp_path / "one", 2, seed=8, size="small", workers=1)
    generate_dataset(tmp_path / "two", 2, seed=8, size="small", workers=2)
    for name in ("annotations.csv", "synthetic_findings.json"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
    raws = sorted((tmp_path / "one" / "subset0").glob("*.raw"))
    assert raws and all((tmp_path / "two" / "subset0" / r.name).read_bytes() == r.read_bytes() for r in raws)


def test_scan_statistics_measure_lungs_and_vessels():
    scan = synthesize_scan(scan_rng(2, 0), "small")
    stats = scan_statistics(scan)
    assert -950 < stats["mld_hu"] < -700
    assert 0 < stats["tbv_ml"] and 0 < stats["bv5_tbv"] < 1
    assert 0 < stats["within_10mm_pct"] <= 100
    text, _ = realism_report([stats])
    assert "Realism report over 1 scan(s)" in text


def test_fissures_match_their_voxel_by_voxel_definition():
    """draw_fissures visits only lung voxels near each surface: it must equal the profile evaluated everywhere."""
    from pivot_monai.data.synthetic import pathology
    from pivot_monai.data.synthetic.anatomy import render_anatomy
    from pivot_monai.data.synthetic.scanner import PRESETS, sample_grid

    rng = np.random.default_rng(5)
    model = sample_chest_model(rng, get_domain("train"))
    grid, _ = sample_grid(rng, PRESETS["small"], model)
    _, lung = render_anatomy(model, grid, rng)
    hu = np.full(grid.shape, -850.0, dtype=np.float32)
    pathology.draw_fissures(hu, grid, lung, model)

    x, y, z = (grid.axis(a).astype(np.float64).reshape([-1 if a == b else 1 for b in range(3)]) for a in range(3))
    t = pathology._FISSURE_THICKNESS_MM
    add = np.zeros(grid.shape)
    for d, valid, nz, visibility in model.fissure_distances(x, y, z):
        w = max(t, float(np.hypot(grid.h * np.sqrt(1.0 - nz * nz), grid.thickness * nz)))
        add = np.maximum(add, np.where(valid, np.clip(1.0 - np.abs(d) / w, 0.0, None) * visibility * t / w, 0.0))
    expected = np.where(lung, -850.0 + add * (pathology._PLEURA_HU + 850.0), -850.0)
    assert (hu > -849.0).sum() > 100  # the fissures are drawn
    np.testing.assert_allclose(hu, expected, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_egg_sd_is_the_two_half_ellipses_it_joins(dtype):
    from pivot_monai.data.synthetic.raster import egg_sd, ellipse_sd

    g = np.linspace(-140.0, 140.0, 97, dtype=dtype)
    dx, dy = g[:, None], g[None, :]
    expected = np.where(dy < 0, ellipse_sd(dx, dy, 120.0, 80.0), ellipse_sd(dx, dy, 120.0, 95.0))
    got = egg_sd(dx, dy, 120.0, 80.0, 95.0)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)  # bit for bit: scans stay the same
