"""Synthetic LUNA16-style CT generator: layout, determinism, geometry, anatomy and nodule ground truth."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import re
import shutil
import time

import numpy as np
import pytest

from pivot_monai.data.annotations import Nodule, read_annotations, read_seriesuids
from pivot_monai.data.geometry import Geometry
from pivot_monai.data.io import read_ct, write_image
from pivot_monai.data.synthetic import (
    GENERATOR_VERSION,
    PRESETS,
    dataset_is_current,
    generate_dataset,
    generate_scan,
    make_seriesuid,
    render_preview,
    sample_nodule_diameters,
    scan_rng,
    synthesize_scan,
)
from pivot_monai.data.synthetic.nodules import EXCLUDED_DIAMETER_RANGE, malignancy_rating
from tests.conftest import FLIP_Z, REPO_ROOT, oblique_direction

DATASET_SEED = 5  # its first two small scans hold several nodules (solid, part-solid and ground-glass)
N_SAMPLE_SCANS = 30
# small-preset voxels are ~2.3 x 2.3 x 1.5-2.5 mm: below ~5 mm a solid nodule's centre voxel is mostly partial volume
SOLID_MIN_DIAMETER_SMALL = 5.0


def _hashes(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Small datasets on disk: two identical runs, a one-scan run of the same seed, and another seed."""
    root = tmp_path_factory.mktemp("synthetic")
    runs = {"a": (DATASET_SEED, 2), "b": (DATASET_SEED, 2), "one": (DATASET_SEED, 1), "other": (DATASET_SEED + 1, 1)}
    summaries = {name: generate_dataset(root / name, n, seed=seed) for name, (seed, n) in runs.items()}
    return root, summaries


@pytest.fixture(scope="module")
def sample_scans():
    """A few dozen small scans in memory (no disk I/O)."""
    return [synthesize_scan(scan_rng(11, i), "small") for i in range(N_SAMPLE_SCANS)]


# ---------------------------------------------------------------------------------------------- layout and files
def test_dataset_has_luna16_layout(datasets):
    root, summaries = datasets
    a = root / "a"
    uids = [s["uid"] for s in summaries["a"]]
    for uid in uids:
        assert (a / "subset0" / f"{uid}.mhd").is_file()
        assert (a / "subset0" / f"{uid}.raw").is_file()
        assert re.fullmatch(r"1\.3\.6\.1\.4\.1\.14519\.5\.2\.1\.6279\.6001\.[1-9]\d{29}", uid)
    assert read_seriesuids(a / "seriesuids.csv") == uids
    assert (a / "seriesuids.csv").read_text().splitlines()[0] == "seriesuid"
    with (a / "annotations.csv").open() as fh:
        assert next(csv.reader(fh)) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "malignancy"]
    with (a / "annotations_excluded.csv").open() as fh:
        assert next(csv.reader(fh))[:5] == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    annotated = read_annotations(a / "annotations.csv")
    assert {uid: len(annotated.get(uid, [])) for uid in uids} == {s["uid"]: s["n_nodules"] for s in summaries["a"]}


def test_dataset_is_current_only_for_this_generator_and_these_settings(datasets, tmp_path):
    root, _ = datasets
    assert dataset_is_current(root / "a", 2, seed=DATASET_SEED)
    assert not dataset_is_current(root / "a", 3, seed=DATASET_SEED)  # other settings
    assert not dataset_is_current(root / "a", 2, seed=DATASET_SEED + 1)
    assert not dataset_is_current(root / "a", 2, seed=DATASET_SEED, size="fullsize")
    assert not dataset_is_current(tmp_path / "missing", 2, seed=DATASET_SEED)
    old = tmp_path / "old"
    shutil.copytree(root / "a", old)
    manifest = json.loads((old / "synthetic.json").read_text())
    (old / "synthetic.json").write_text(json.dumps({**manifest, "generator_version": GENERATOR_VERSION - 1}))
    assert not dataset_is_current(old, 2, seed=DATASET_SEED)  # an older generator renders other scans
    (old / "synthetic.json").unlink()
    assert not dataset_is_current(old, 2, seed=DATASET_SEED)  # partial: the manifest is written last


def test_summary_describes_each_scan(datasets):
    _, summaries = datasets
    for s in summaries["a"]:
        assert set(s) >= {"uid", "shape", "spacing", "origin", "n_nodules", "findings"}
        assert len(s["shape"]) == 3 and len(s["spacing"]) == 3


def test_same_seed_gives_byte_identical_files(datasets):
    root, _ = datasets
    assert _hashes(root / "a") == _hashes(root / "b")


def test_scans_do_not_depend_on_num_scans(datasets):
    root, summaries = datasets
    uid = summaries["one"][0]["uid"]
    assert uid == summaries["a"][0]["uid"]
    for suffix in (".mhd", ".raw"):
        name = f"subset0/{uid}{suffix}"
        assert _hashes(root / "one")[name] == _hashes(root / "a")[name]


def test_different_seed_gives_different_scans(datasets):
    root, summaries = datasets
    uid_a, uid_o = summaries["a"][0]["uid"], summaries["other"][0]["uid"]
    assert uid_a != uid_o
    raw_a = (root / "a" / "subset0" / f"{uid_a}.raw").read_bytes()
    raw_o = (root / "other" / "subset0" / f"{uid_o}.raw").read_bytes()
    assert hashlib.sha256(raw_a).digest() != hashlib.sha256(raw_o).digest()


def test_seriesuid_is_deterministic_and_distinct():
    assert make_seriesuid(3, 1) == make_seriesuid(3, 1)
    assert len({make_seriesuid(s, i) for s in range(3) for i in range(20)}) == 60


# ---------------------------------------------------------------------------------------------- ground truth
def test_annotations_read_back_land_on_nodules(datasets):
    root, summaries = datasets
    annotated = read_annotations(root / "a" / "annotations.csv")
    checked = []
    for s in summaries["a"]:
        vol = read_ct(root / "a" / "subset0" / f"{s['uid']}.mhd")
        truth = [f for f in s["findings"] if not f["excluded"]]
        for nodule, finding in zip(annotated.get(s["uid"], []), truth):
            np.testing.assert_allclose(nodule.world, finding["world"], atol=1e-3)
            ijk = np.round(vol.geometry.world_to_index(np.asarray(nodule.world))).astype(int)
            assert vol.geometry.contains_index(ijk)[0]
            hu = float(vol.array[tuple(ijk)])
            if finding["kind"] in ("ground-glass", "part-solid"):
                assert hu > -750.0, (finding, hu)
            elif nodule.diameter_mm >= SOLID_MIN_DIAMETER_SMALL:
                assert hu > -300.0, (finding, hu)
            checked.append(finding["kind"])
    assert len(checked) >= 2


def test_nodule_centres_are_bright_in_many_scans(sample_scans):
    kinds = {f["kind"] for s in sample_scans for f in s.findings if not f["excluded"]}
    assert {"solid", "part-solid", "ground-glass"} <= kinds
    for scan in sample_scans:
        truth = [f for f in scan.findings if not f["excluded"]]
        for nodule, finding in zip(scan.nodules, truth):
            ijk = tuple(np.round(scan.geometry.world_to_index(np.asarray(nodule.world))).astype(int))
            hu = float(scan.array[ijk])
            if finding["kind"] in ("ground-glass", "part-solid"):
                assert hu > -750.0, (finding, hu)
            elif nodule.diameter_mm >= SOLID_MIN_DIAMETER_SMALL:
                assert hu > -300.0, (finding, hu)


def test_nodules_lie_inside_the_lungs(sample_scans):
    n = 0
    for scan in sample_scans:
        for nodule in scan.nodules + scan.excluded:
            ijk = tuple(np.round(scan.geometry.world_to_index(np.asarray(nodule.world))).astype(int))
            assert scan.lung_mask[ijk], nodule
            n += 1
    assert n > N_SAMPLE_SCANS


def test_some_scans_have_no_nodules(sample_scans):
    counts = np.array([len(s.nodules) for s in sample_scans])
    assert counts.max() <= 4
    assert 1 / N_SAMPLE_SCANS <= np.mean(counts == 0) <= 0.35


def test_excluded_findings_are_tiny(sample_scans):
    diameters = [n.diameter_mm for s in sample_scans for n in s.excluded]
    assert diameters
    lo, hi = EXCLUDED_DIAMETER_RANGE
    assert all(lo <= d <= hi for d in diameters)
    assert all(n.malignancy is None for s in sample_scans for n in s.excluded)


def test_malignancy_is_a_lidc_rating(sample_scans):
    ratings = [n.malignancy for s in sample_scans for n in s.nodules]
    assert all(1.0 <= r <= 5.0 and (4 * r) == int(4 * r) for r in ratings)


def test_malignancy_rises_with_size():
    rng = np.random.default_rng(0)
    small = np.mean([malignancy_rating(rng, 4.0, 0.2, "solid") for _ in range(400)])
    large = np.mean([malignancy_rating(rng, 20.0, 0.2, "solid") for _ in range(400)])
    assert large > small + 1.0


def test_diameters_are_lognormal_like_luna16(rng):
    d = sample_nodule_diameters(rng, 20000)
    assert d.min() >= 3.0 and d.max() <= 30.0
    assert 4.0 <= np.median(d) <= 10.0
    assert np.mean((d >= 4.0) & (d <= 10.0)) > 0.5
    log_d = np.log(d)
    skew = np.mean((log_d - log_d.mean()) ** 3) / log_d.std() ** 3
    assert abs(skew) < 0.35  # symmetric in log space (up to the truncation)
    assert np.mean(d > 15.0) > 0.01  # with a long tail in mm


# ---------------------------------------------------------------------------------------------- geometry
def test_small_scans_are_anisotropic_with_lidc_like_origins(sample_scans):
    for scan in sample_scans:
        g = scan.geometry
        sp = g.spacing
        assert sp[0] == sp[1] and sp[2] != sp[0]
        assert 2.0 <= sp[0] <= 2.65 and 1.5 <= sp[2] <= 2.5  # LUNA16 keeps slices of at most 2.5 mm
        assert 128 <= g.size[0] == g.size[1] <= 160 and 110 <= g.size[2] <= 200
        assert -270.0 < g.origin[0] < -140.0 and -270.0 < g.origin[1] < -140.0 and -330.0 < g.origin[2] < -50.0
        np.testing.assert_array_equal(g.direction, np.eye(3))
    assert len({round(float(s.geometry.spacing[0]), 3) for s in sample_scans}) > 10


def test_written_geometry_reads_back_equal(tmp_path):
    array, geom, _, _ = generate_scan(5, "small", direction=FLIP_Z)
    vol = read_ct(write_image(array, geom, tmp_path / "scan.mhd"))
    np.testing.assert_allclose(vol.geometry.origin, geom.origin, atol=1e-4)
    np.testing.assert_allclose(vol.geometry.spacing, geom.spacing, atol=1e-5)
    np.testing.assert_allclose(vol.geometry.direction, geom.direction, atol=1e-6)
    assert vol.geometry.size == geom.size
    np.testing.assert_array_equal(vol.array, array.astype(np.float32))


def test_flipped_direction_keeps_world_positions():
    plain = synthesize_scan(3, "small")
    flipped = synthesize_scan(3, "small", direction=FLIP_Z)
    np.testing.assert_array_equal(flipped.array, plain.array[:, :, ::-1])
    assert [n.world for n in flipped.nodules] == [n.world for n in plain.nodules]
    top = plain.geometry.index_to_world(np.array([0, 0, plain.geometry.size[2] - 1]))
    np.testing.assert_allclose(flipped.geometry.origin, top)
    np.testing.assert_allclose(flipped.geometry.direction, FLIP_Z)


def test_generate_scan_returns_array_geometry_and_nodules():
    array, geom, nodules, excluded = generate_scan(np.random.default_rng(2), "small", seriesuid="1.2.3")
    assert array.dtype == np.int16 and array.shape == geom.size
    assert isinstance(geom, Geometry)
    assert all(isinstance(n, Nodule) and n.seriesuid == "1.2.3" for n in nodules + excluded)
    assert all(3.0 <= n.diameter_mm <= 30.0 and 1.0 <= n.malignancy <= 5.0 for n in nodules)


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="size must be one of"):
        generate_scan(0, "huge")
    with pytest.raises(ValueError, match="axis-aligned"):
        generate_scan(0, "small", direction=oblique_direction())
    with pytest.raises(ValueError, match="num_scans"):
        generate_dataset(tmp_path, 0)


# ---------------------------------------------------------------------------------------------- anatomy and HU
def test_lungs_air_and_tissue_have_ct_values(sample_scans):
    for scan in sample_scans[:10]:
        a = scan.array
        lung = a[scan.lung_mask]
        assert scan.lung_mask.sum() * np.prod(scan.geometry.spacing) > 2.0e6  # > 2 litres of lung
        # inspiratory lungs: Perc15 reaches -935 HU in real CT, so the median can sit just under -900
        assert -910.0 < lung.mean() < -780.0 and -920.0 < np.median(lung) < -800.0
        corner = a[:8, :8, :].astype(float)
        assert -1030.0 < corner.mean() < -960.0
        assert a.max() > 400  # bone
        assert ((a > -200) & (a < 100)).mean() > 0.2  # soft tissue
        assert a.min() >= -1024


# ---------------------------------------------------------------------------------------------- preview and script
def test_render_preview_writes_png(datasets, tmp_path):
    root, summaries = datasets
    png = render_preview(root / "a", tmp_path / "preview.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    mhd = root / "a" / "subset0" / f"{summaries['a'][0]['uid']}.mhd"
    assert render_preview(mhd, tmp_path / "one.png").is_file()
    with pytest.raises(ValueError, match="nodule_index"):
        render_preview(root / "a", tmp_path / "bad.png", nodule_index=99)


def test_script_writes_dataset_and_preview(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "make_synthetic_data", REPO_ROOT / "scripts" / "make_synthetic_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "ds"
    assert (
        module.main(
            [
                "--output-dir",
                str(out),
                "--num-scans",
                "1",
                "--seed",
                str(DATASET_SEED),
                "--preview",
                str(tmp_path / "p.png"),
            ]
        )
        == 0
    )
    assert len(list((out / "subset0").glob("*.mhd"))) == 1
    assert (tmp_path / "p.png").is_file()
    assert len(json.loads((out / "synthetic_findings.json").read_text())) == 1
    assert "(default: small)" in " ".join(module.build_parser().format_help().split())


# ---------------------------------------------------------------------------------------------- full size
@pytest.mark.slow
def test_fullsize_scan_is_512_square_and_fast_enough():
    start = time.perf_counter()
    scan = synthesize_scan(scan_rng(2, 0), "fullsize")  # a typical 2 mm-slice scan (~150 slices)
    seconds = time.perf_counter() - start
    g = scan.geometry
    assert g.size[:2] == (512, 512) and 110 <= g.size[2] <= 300
    assert 0.6 <= g.spacing[0] <= 1.0 and 1.0 <= g.spacing[2] <= 2.5
    assert seconds < 60.0
    truth = [f for f in scan.findings if not f["excluded"]]
    for nodule, finding in zip(scan.nodules, truth):
        hu = float(scan.array[tuple(np.round(g.world_to_index(np.asarray(nodule.world))).astype(int))])
        if finding["kind"] in ("ground-glass", "part-solid"):
            assert hu > -750.0, (finding, hu)
        elif nodule.diameter_mm >= 4.0:  # a 3 mm sphere's centre can sit between 2 mm slices
            assert hu > -300.0, (finding, hu)
    assert PRESETS["fullsize"].matrix == (512, 512)
